"""``compress`` for a PyTorch ``nn.Sequential`` given as ``package.module:factory``.

The module's input shape is taken from the training data (as ``edgedl convert`` takes it);
its outputs are taken as logits (a final ``nn.Softmax`` is read through as log-probabilities).
The result is a TorchScript ``.pt`` file.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rich.console import Console

from edgedl.errors import ModelError

from .. import torch_source
from ..data import stored_sample_shape
from . import torch_model as tm
from .options import PRUNE_RATIOS, CompressOptions, label_weight, load_data, schedule
from .outcome import CompressResult, Measured, finish
from .training import History, TrainingSpec


def compress_torch(
    spec: str, options: CompressOptions, epochs: int, console: Console | None
) -> CompressResult:
    """Compress the PyTorch model ``spec`` (``package.module:factory``) as ``options`` say."""
    import torch

    if not torch_source.is_factory(spec):
        raise ModelError(
            "edgedl compress rebuilds a PyTorch model from its code: give it as "
            "package.module:factory (an nn.Sequential) with --state-dict, not a "
            "TorchScript or torch.export file"
        )
    teacher = torch_source.load_module(spec, options.state_dict).module
    shape = stored_sample_shape(options.data, "training")
    sample = torch.zeros((2, *shape))
    with torch.no_grad():
        classes = int(teacher(sample).shape[-1])
    train, val_x, val_y = load_data(options, list(shape), classes)
    teacher_logits = tm.logits(teacher, train.x)
    if isinstance(list(teacher)[-1], torch.nn.Softmax):
        teacher_logits = np.log(np.clip(teacher_logits, 1e-7, 1.0))
    base = tm.accuracy(teacher, val_x, val_y)
    alpha = label_weight(options, train)
    lr = options.learning_rate or (3e-3 if options.method == "distill" else 1e-3)
    training = TrainingSpec(
        epochs, options.batch_size, lr, alpha, options.temperature, schedule(options)
    )

    def fit(model: Any, title: str) -> History:
        if epochs == 0:
            return History()
        return tm.train(model, train.x, train.y, teacher_logits, (val_x, val_y), training,
                        options.seed, console, title)  # fmt: skip

    torch.manual_seed(options.seed)
    started = time.perf_counter()
    details: dict[str, Any]
    if options.method == "prune":
        ratios = (
            (options.ratio,) if options.ratio is not None
            else PRUNE_RATIOS if options.max_accuracy_drop is not None else (0.5,)
        )  # fmt: skip
        tried = []
        for ratio in ratios:
            model, changes = tm.prune(teacher, ratio, sample)
            history = fit(model, f"prune {ratio:.0%}")
            acc = tm.accuracy(model, val_x, val_y)
            tried.append({"ratio": ratio, "accuracy": round(acc, 3)})
            bound = options.max_accuracy_drop
            if bound is None or base - acc <= bound:
                break
        details = {"ratio": ratio, "ratios_tried": tried,
                   "layers": {k: {"before": a, "after": b} for k, (a, b) in changes.items()}}  # fmt: skip
    elif options.method == "distill":
        if options.student is not None:
            model = torch_source.load_module(options.student, None).module
            with torch.no_grad():
                got = tuple(model(sample).shape[1:])
            if got != (classes,):
                raise ModelError(
                    f"the student from {options.student} outputs shape {list(got)}, the "
                    f"teacher [{classes}]: they must match"
                )
            what: dict[str, Any] = {"student": options.student}
        else:
            model = tm.narrower(teacher, options.width, sample)
            what = {"width": options.width}
        history = fit(model, "distill")
        details = {**what, "temperature": options.temperature, "alpha": alpha}
    elif options.method == "lowrank":
        model, layers = tm.factorize(teacher, options.energy, options.rank)
        history = fit(model, "low-rank") if any(f.factorized for f in layers) else History()
        details = {"energy": options.energy, "rank": options.rank,
                   "layers": [f.to_dict() for f in layers]}  # fmt: skip
    else:
        model, clustered = tm.cluster(teacher, options.clusters, options.seed)
        history = History()
        if epochs > 0:
            history = fit(model, "cluster")
            model, clustered = tm.cluster(model, options.clusters, options.seed)
        details = {"clusters": options.clusters, "layers": [c.to_dict() for c in clustered]}
    seconds = time.perf_counter() - started
    model.eval()
    common = {"method": options.method, "source": spec, "seed": options.seed, "epochs": epochs,
              "labels_used": train.y is not None and alpha > 0,
              "schedule": training.schedule}  # fmt: skip
    return finish(
        common,
        Measured(tm.parameters(teacher), tm.macs(teacher, sample), base),
        Measured(tm.parameters(model), tm.macs(model, sample), tm.accuracy(model, val_x, val_y)),
        history,
        seconds,
        details,
        options.max_accuracy_drop,
        options.output,
        lambda path: tm.save(model, sample, path),
    )
