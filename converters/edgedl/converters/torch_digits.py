"""A PyTorch sample: a small CNN trained on scikit-learn's digits, saved the three ways users do.

``make_model`` is a factory ``edgedl convert`` can take as
``edgedl.converters.torch_digits:make_model`` with ``--state-dict``; :func:`train_torch_digits`
also writes the same model as a TorchScript file and a ``torch.export`` file, and the
digits split in PyTorch's layout (N, 1, 8, 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .samples import DIGIT_LABELS, digits_split


@dataclass
class TorchDigitsSample:
    """Where :func:`train_torch_digits` wrote its files, and the module's test accuracy."""

    state_dict: Path
    torchscript: Path
    exported: Path
    train: Path
    test: Path
    labels: Path
    test_accuracy: float
    factory: str = "edgedl.converters.torch_digits:make_model"


def make_model() -> Any:
    """The digits CNN in PyTorch (about 70k parameters), with untrained weights."""
    import torch
    from torch import nn

    torch.manual_seed(0)  # the same initial weights on every call
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train_torch_digits(out_dir: str | Path, epochs: int = 15, seed: int = 0) -> TorchDigitsSample:
    """Train the CNN deterministically (seeded, deterministic algorithms, one thread).

    Writes ``digits.state.pt`` (state dict), ``digits.pt`` (TorchScript), ``digits.pt2``
    (``torch.export``), ``train.npz`` (also the calibration data), ``test.npz`` and
    ``labels.txt``.
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums in a fixed order: the same weights on every run
    try:
        x_train, y_train, x_test, y_test = (
            a.transpose(0, 3, 1, 2) if a.ndim == 4 else a for a in digits_split(seed)
        )
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        xt, yt = torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train)
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=order).split(32):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            predicted = model(torch.from_numpy(np.ascontiguousarray(x_test))).argmax(1).numpy()
        paths = TorchDigitsSample(
            state_dict=out / "digits.state.pt",
            torchscript=out / "digits.pt",
            exported=out / "digits.pt2",
            train=out / "train.npz",
            test=out / "test.npz",
            labels=out / "labels.txt",
            test_accuracy=float(np.mean(predicted == y_test)),
        )
        torch.save(model.state_dict(), paths.state_dict)
        example = (torch.zeros(1, 1, 8, 8),)
        torch.jit.trace(model, example).save(str(paths.torchscript))
        torch.export.save(torch.export.export(model, example), str(paths.exported))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    np.savez(paths.train, x=x_train, y=y_train)
    np.savez(paths.test, x=x_test, y=y_test)
    paths.labels.write_text("\n".join(DIGIT_LABELS) + "\n", encoding="utf-8")
    return paths
