"""What ``edgedl compress`` takes and the checks shared by its Keras and PyTorch runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import DataError, UsageError

from ..data import Dataset, load_dataset

METHODS = ("prune", "distill", "lowrank", "cluster")
PRUNE_RATIOS = (0.75, 0.5, 0.25)  # tried in turn under --max-accuracy-drop without --ratio


@dataclass
class CompressOptions:
    """Everything ``edgedl compress`` takes besides the model path."""

    method: str
    data: Path
    validation: Path
    output: Path
    epochs: int | None = None  # default per method: see DEFAULT_EPOCHS
    ratio: float | None = None
    max_accuracy_drop: float | None = None
    width: float = 0.5
    student: str | None = None
    alpha: float | None = None
    temperature: float = 4.0
    energy: float = 0.9
    rank: int | None = None
    clusters: int = 16
    batch_size: int = 64
    learning_rate: float | None = None  # default: distill 3e-3 (from scratch), others 1e-3
    schedule: str = "cosine"  # the learning rate: "cosine" (decays to 0) or "constant"
    seed: int = 0
    force: bool = False
    state_dict: Path | None = None  # a PyTorch factory's weights


DEFAULT_EPOCHS = {"prune": 5, "distill": 20, "lowrank": 5, "cluster": 0}


def load_data(
    options: CompressOptions, shape: list[int], classes: int
) -> tuple[Dataset, NDArray[np.float32], NDArray[np.int64]]:
    """Training and validation data for an input of ``shape`` and ``classes`` outputs.

    Validation must have labels; labels must name one of the model's classes.
    """
    train = load_dataset(options.data, shape, role="training")
    val = load_dataset(options.validation, shape, role="validation")
    if val.y is None:
        raise DataError(
            f"validation data {options.validation} has no labels (y): compress measures "
            "the accuracy it keeps against them"
        )
    for ds, role in ((train, "training"), (val, "validation")):
        if ds.y is not None and (ds.y.min() < 0 or ds.y.max() >= classes):
            raise DataError(
                f"{role} data {ds.source}: labels run from {ds.y.min()} to {ds.y.max()}, "
                f"the model has {classes} outputs (classes 0 to {classes - 1})"
            )
    return train, val.x, val.y


SCHEDULES = ("constant", "cosine")


def schedule(options: CompressOptions) -> str:
    """The learning-rate schedule, checked: "cosine" (the default) or "constant"."""
    if options.schedule not in SCHEDULES:
        raise UsageError(
            f"unknown --schedule {options.schedule!r} (choose from {', '.join(SCHEDULES)})"
        )
    return options.schedule


def label_weight(options: CompressOptions, train: Dataset) -> float:
    """The weight of the labels in the loss: given, or 1 (0 for distill: 0.5) with labels, else 0."""
    if options.alpha is not None:
        if not 0.0 <= options.alpha <= 1.0:
            raise UsageError(f"--alpha must be in [0, 1], not {options.alpha}")
        if options.alpha > 0 and train.y is None:
            raise DataError(
                f"--alpha {options.alpha} weighs labels, but training data "
                f"{train.source} has none (no y); use --alpha 0 to learn from the "
                "teacher's outputs only"
            )
        return options.alpha
    if train.y is None:
        return 0.0
    return 0.5 if options.method == "distill" else 1.0
