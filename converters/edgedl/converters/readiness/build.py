"""Assemble a readiness report: quality, calibration, robustness and load, as one dictionary.

:func:`readiness_report` takes models as :data:`~.robustness.Scorer` callables, so the
same report comes from ``edgedl report`` (a bundle and a float reference bundle or source
model) and from the end of ``edgedl convert`` (the artifact and the source it came from).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.bundle import MANIFEST_FILE, Bundle
from edgedl.errors import DataError
from edgedl.runtime import Runner

from ..data import Dataset
from .corruptions import InputKind, input_kind
from .metrics import agreement, class_drops, classification_metrics
from .robustness import Scorer, corruption_suite, garbage_suite, probe_agent

REPORT_SCHEMA_VERSION = 1
BATCH = 64


@dataclass
class Scored:
    """A model to report on: what to call it and how to score a batch."""

    name: str
    score: Scorer


def bundle_scorer(bundle: Bundle) -> Scorer:
    """Score batches through the agent's runtime loader; the first 2-D output is the classes."""
    from edgedl import runtime

    return runner_scorer(runtime.load(bundle), str(bundle.path))


def runner_scorer(runner: Runner, where: str = "the artifact") -> Scorer:
    """Score batches with a loaded :class:`~edgedl.runtime.Runner`."""
    name = runner.inputs[0].name
    outputs = [s for s in runner.outputs if len(s.shape) == 2 and s.shape[1] >= 2]
    if not outputs:
        raise DataError(f"{where}: no output of shape [batch, classes] to report on")
    out = outputs[0].name

    def score(x: NDArray[np.float32]) -> NDArray[np.float32]:
        if len(x) == 0:
            return runner.run({name: x})[out]
        parts = [runner.run({name: x[i : i + BATCH]})[out] for i in range(0, len(x), BATCH)]
        return np.concatenate(parts)

    return score


def source_scorer(source: Any) -> Scorer:
    """Score batches with a loaded source model (:class:`~..sources.SourceModel`)."""
    name = source.inputs[0].name

    def score(x: NDArray[np.float32]) -> NDArray[np.float32]:
        parts = [source.predict({name: x[i : i + BATCH]}) for i in range(0, len(x), BATCH)]
        merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        for arr in merged.values():
            if arr.ndim == 2 and arr.shape[1] >= 2:
                return arr
        raise DataError("the reference model has no output of shape [batch, classes]")

    return score


def is_bundle(path: Path) -> bool:
    """A bundle directory or .tar (as opposed to a source model file)."""
    return (path.is_dir() and (path / MANIFEST_FILE).is_file()) or path.suffix == ".tar"


def readiness_report(
    about: dict[str, Any],
    data: Dataset,
    artifact: Scored,
    reference: Scored | None = None,
    class_names: Sequence[str] | None = None,
    kind: InputKind | None = None,
    agent: tuple[str, str, str] | None = None,
    load: dict[str, Any] | None = None,
    robustness_samples: int = 500,
) -> dict[str, Any]:
    """The report: ``about`` (bundle facts), quality of both models, robustness, load.

    ``agent`` is ``(url, model name, input name)`` of a running agent to probe with garbage
    tensors; ``load`` is what ``edgedl loadtest --json`` printed.
    """
    if data.y is None:
        raise DataError(f"validation data {data.source} has no labels (y): a report needs them")
    art_scores = artifact.score(data.x)
    n_classes = int(art_scores.shape[1])
    names = list(class_names or data.class_names or [str(i) for i in range(n_classes)])
    if len(names) != n_classes:
        raise DataError(f"{len(names)} class names for a model with {n_classes} classes")
    if int(data.y.max()) >= n_classes or int(data.y.min()) < 0:
        raise DataError(f"labels in {data.source} go beyond the model's {n_classes} classes")
    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        **about,
        "validation": {"source": data.source, "samples": len(data)},
        "class_names": names,
        "artifact_name": artifact.name,
        "reference_name": reference.name if reference else None,
        "artifact": classification_metrics(data.y, art_scores, names),
        "reference": None,
        "comparison": None,
    }
    if reference is not None:
        ref_scores = reference.score(data.x)
        report["reference"] = classification_metrics(data.y, ref_scores, names)
        report["comparison"] = {
            "agreement": agreement(ref_scores, art_scores),
            "accuracy_drop_pts": round(
                (report["reference"]["accuracy"] - report["artifact"]["accuracy"]) * 100.0, 4
            ),
            "ece_change": report["artifact"]["ece"] - report["reference"]["ece"],
            "class_drops": class_drops(report["reference"], report["artifact"]),
        }
    kind = kind or input_kind(data.x.shape[1:])
    sub = data.head(robustness_samples)
    assert sub.y is not None
    report["robustness"] = {
        "kind": kind,
        "samples": len(sub),
        "corruptions": corruption_suite(
            sub.x, sub.y, kind, artifact.score, reference.score if reference else None
        ),
        "garbage": garbage_suite(sub.x, artifact.score),
        "agent": probe_agent(*agent, sub.x) if agent else None,
    }
    report["load"] = load
    return report


def load_json(path: Path) -> dict[str, Any]:
    """A load-test result file (``edgedl loadtest --json > FILE``)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read load-test results {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise DataError(f"{path} is not the JSON of 'edgedl loadtest --json' (no 'steps')")
    return doc
