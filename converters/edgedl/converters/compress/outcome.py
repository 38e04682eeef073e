"""What every compression run ends with, Keras or PyTorch: the report, the gate, the files."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedl.errors import UsageError, ValidationFailed

from .training import History


@dataclass
class CompressResult:
    """The written model and the report (also written next to it as ``OUTPUT.json``)."""

    output: Path
    report: dict[str, Any] = field(default_factory=dict)


def check_output(out: Path, suffix: str, force: bool) -> None:
    """``out`` must end in ``suffix`` and not exist unless ``force``."""
    if out.suffix != suffix:
        raise UsageError(f"--output must be a {suffix} file for this model, not {out.name!r}")
    if out.exists() and not force:
        raise UsageError(f"{out} exists; pass --force to replace it")


@dataclass
class Measured:
    """One model's size and held-out accuracy."""

    parameters: int
    macs: int
    accuracy: float


def finish(
    common: dict[str, Any],
    before: Measured,
    after: Measured,
    history: History,
    seconds: float,
    details: dict[str, Any],
    max_accuracy_drop: float | None,
    out: Path,
    save: Callable[[Path], None],
) -> CompressResult:
    """Build the report; fail the accuracy gate or save the model and its report."""
    drop = round(before.accuracy - after.accuracy, 3)
    report = {
        **common,
        "output": str(out),
        "parameters": {"before": before.parameters, "after": after.parameters},
        "macs": {"before": before.macs, "after": after.macs},
        "accuracy": {"before": round(before.accuracy, 3), "after": round(after.accuracy, 3)},
        "accuracy_drop_pts": drop,
        "training_seconds": round(seconds, 1),
        "history": {"loss": history.loss, "accuracy": history.accuracy},
        **details,
    }
    if max_accuracy_drop is not None and drop > max_accuracy_drop:
        raise ValidationFailed(
            f"accuracy dropped {drop:.2f} points ({before.accuracy:.2f}% -> "
            f"{after.accuracy:.2f}%), more than --max-accuracy-drop {max_accuracy_drop}; "
            "nothing written",
            report,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    save(out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return CompressResult(out, report)
