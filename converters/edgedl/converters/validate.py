"""Compare a converted artifact with its source model on validation data.

Measures what users check before shipping a quantized model: per-output error and SQNR,
top-1 agreement with the source, accuracy of both when labels are given, and latency of
single-sample inference on this host through the same runtime loader the agent uses.

An output whose rows are unit vectors with negative values (a sentence or image embedding,
L2-normalised) is not class scores: it has no labels or top-1 to agree on, so it is judged
by the cosine similarity of each row to the source's (mean and worst) and by SQNR.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import UsageError
from edgedl.runtime import Runner

from .data import Dataset
from .sources import SourceModel

Arrays = Mapping[str, NDArray[Any]]


def sqnr_db(reference: NDArray[Any], artifact: NDArray[Any]) -> float | None:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−art)²).

    None when the artifact matches exactly (infinite SQNR) or the reference is all zero.
    """
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum(np.square(ref - np.asarray(artifact, dtype=np.float64))))
    signal = float(np.sum(np.square(ref)))
    if noise == 0.0 or signal == 0.0 or not math.isfinite(noise):
        return None
    return round(10.0 * math.log10(signal / noise), 3)


def output_errors(reference: Arrays, artifact: Arrays) -> dict[str, dict[str, Any]]:
    """Per output: max and mean absolute error, SQNR, and how many values are NaN/Inf."""
    result = {}
    for name, ref in reference.items():
        art = np.asarray(artifact[name], dtype=np.float64)
        nonfinite = int(np.sum(~np.isfinite(art)))
        diff = np.abs(np.asarray(ref, dtype=np.float64) - art)
        finite = diff[np.isfinite(diff)]
        result[name] = {
            "max_abs_error": float(finite.max()) if finite.size else None,
            "mean_abs_error": float(finite.mean()) if finite.size else None,
            "sqnr_db": sqnr_db(ref, art) if not nonfinite else None,
            "nonfinite_values": nonfinite,
        }
    return result


def is_embedding(arr: NDArray[Any]) -> bool:
    """Whether ``arr`` (batch first) holds L2-normalised rows with negative values: embeddings."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 2 or a.shape[0] == 0 or not np.all(np.isfinite(a)):
        return False
    norms = np.linalg.norm(a, axis=1)
    return bool(np.all(np.abs(norms - 1.0) < 1e-3) and np.any(a < 0))


def classification_output(outputs: Arrays) -> str | None:
    """The first output that looks like class scores (2-D, two or more columns, no embedding)."""
    for name, arr in outputs.items():
        if arr.ndim == 2 and arr.shape[1] >= 2 and not is_embedding(arr):
            return name
    return None


def cosine_report(reference: Arrays, artifact: Arrays) -> dict[str, Any]:
    """Cosine similarity of the artifact's embeddings to the source's, per output and overall.

    Per embedding output: the mean and the worst (min) over the rows; overall, the worst of
    those. Empty (``embedding_outputs: []``) when no output is an embedding.
    """
    per_output: dict[str, dict[str, float]] = {}
    for name, ref in reference.items():
        if not is_embedding(ref):
            continue
        r = np.asarray(ref, dtype=np.float64)
        a = np.nan_to_num(np.asarray(artifact[name], dtype=np.float64))
        norms = np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1)
        cos = np.sum(r * a, axis=1) / np.maximum(norms, 1e-30)
        per_output[name] = {
            "cosine_mean": round(float(cos.mean()), 6),
            "cosine_min": round(float(cos.min()), 6),
        }
    if not per_output:
        return {"embedding_outputs": []}
    return {
        "embedding_outputs": list(per_output),
        "cosine": per_output,
        "cosine_mean": min(v["cosine_mean"] for v in per_output.values()),
        "cosine_min": min(v["cosine_min"] for v in per_output.values()),
        "judged_by": "no labels exist for embeddings: cosine similarity to the source's "
        "embeddings (mean and worst over the validation set) and SQNR",
    }


def top1_report(reference: Arrays, artifact: Arrays, labels: NDArray[Any] | None) -> dict[str, Any]:
    """Top-1 agreement of the artifact with the source and, given labels, both accuracies.

    All four keys are None when no output looks like class scores; the accuracies and the
    drop (in percentage points) are None without labels.
    """
    report: dict[str, Any] = {
        "top1_agreement": None,
        "reference_accuracy": None,
        "artifact_accuracy": None,
        "accuracy_drop_pts": None,
    }
    cls = classification_output(reference)
    if cls is None:
        return report
    ref_top1 = reference[cls].argmax(axis=1)
    art_top1 = np.nan_to_num(artifact[cls], nan=-np.inf).argmax(axis=1)
    report["top1_agreement"] = round(float(np.mean(ref_top1 == art_top1)), 6)
    if labels is not None:
        ref_acc = float(np.mean(ref_top1 == labels)) * 100.0
        art_acc = float(np.mean(art_top1 == labels)) * 100.0
        report["reference_accuracy"] = round(ref_acc, 4)
        report["artifact_accuracy"] = round(art_acc, 4)
        report["accuracy_drop_pts"] = round(ref_acc - art_acc, 4)
    return report


def judge(reference: Arrays, artifact: Arrays, labels: NDArray[Any] | None) -> dict[str, Any]:
    """What a candidate is judged by: :func:`top1_report` always, and :func:`cosine_report`'s
    keys when an output is an embedding. :func:`drop_pts` reads its drop from this."""
    report = top1_report(reference, artifact, labels)
    embeddings = cosine_report(reference, artifact)
    if embeddings["embedding_outputs"]:
        report.update(embeddings)
    return report


# What the drop of each measure is, in points (``drop_measure`` names one).
DROP_MEASURES = {
    "accuracy": "accuracy drop against the labels, in points",
    "agreement": "share of samples whose top-1 class differs from the source's, in points",
    "cosine": "100 x (1 - mean cosine of the embeddings to the source's); no labels exist "
    "for embeddings",
}


def drop_measure(report: dict[str, Any]) -> str | None:
    """Which drop a report of :func:`judge` gives: ``accuracy`` with labels, ``agreement``
    (top-1) for class scores without them, ``cosine`` for embeddings; None for neither."""
    if report.get("accuracy_drop_pts") is not None:
        return "accuracy"
    if report.get("top1_agreement") is not None:
        return "agreement"
    if report.get("cosine_mean") is not None:
        return "cosine"
    return None


def drop_pts(report: dict[str, Any]) -> float:
    """The drop a candidate is judged by, in points, as :func:`drop_measure` names it: the
    accuracy drop, the top-1 disagreement, or 100 x (1 - mean cosine) for embeddings.

    The worst cosine is reported beside it but not counted: the bound is on the typical
    sample, as top-1 disagreement is a share of samples (one sample far off still lowers the
    mean by its share). Raises :class:`UsageError` when
    no output is class scores or an embedding (nothing to judge a drop by).
    """
    measure = drop_measure(report)
    if measure == "accuracy":
        return float(report["accuracy_drop_pts"])
    if measure == "agreement":
        return round((1.0 - float(report["top1_agreement"])) * 100.0, 4)
    if measure == "cosine":
        return round((1.0 - float(report["cosine_mean"])) * 100.0, 4)
    raise UsageError(
        "no output of this model is class scores or an L2-normalised embedding, so there is "
        "no drop to hold to --max-accuracy-drop: convert it to one named --target"
    )


@dataclass
class LatencyStats:
    """Single-sample latency on this host."""

    p50: float
    p95: float
    mean: float
    runs: int
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``latency_ms`` entry: the times rounded to 4 places."""
        return {
            "p50": round(self.p50, 4),
            "p95": round(self.p95, 4),
            "mean": round(self.mean, 4),
            "runs": self.runs,
            "threads": self.threads,
        }


def measure_latency(
    run: Callable[[dict[str, NDArray[Any]]], Any],
    samples: Mapping[str, NDArray[Any]],
    runs: int = 100,
    warmup: int = 5,
) -> LatencyStats:
    """Time ``run`` on one sample at a time (cycling through ``samples``), after a warm-up."""
    n = next(iter(samples.values())).shape[0]
    times = []
    for i in range(warmup + runs):
        one = {k: v[i % n : i % n + 1] for k, v in samples.items()}
        start = time.perf_counter()
        run(one)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    arr = np.asarray(times)
    return LatencyStats(
        p50=float(np.percentile(arr, 50)),
        p95=float(np.percentile(arr, 95)),
        mean=float(arr.mean()),
        runs=runs,
    )


@dataclass
class Validation:
    """The outcome of validating an artifact against its source."""

    report: dict[str, Any]
    artifact_outputs: dict[str, NDArray[np.float32]]
    warnings: list[str] = field(default_factory=list)


#: Samples run alone to compare with their batched outputs.
BATCH_DEPENDENCE_SAMPLES = 8
#: Largest difference, as a share of the outputs' range, that counts as batch-independent.
BATCH_DEPENDENCE_WARN = 1e-4


def batch_dependence(
    runner: Runner, data: Dataset, name: str, batched: dict[str, NDArray[np.float32]]
) -> float:
    """How far the first samples' outputs run alone are from their outputs in a batch.

    The largest absolute difference over every output, as a share of that output's range
    (max - min over the batched outputs): 0 for a model whose answer for a sample never
    depends on the other samples of its batch.
    """
    worst = 0.0
    for i in range(min(BATCH_DEPENDENCE_SAMPLES, len(data))):
        alone = runner.run(data.feeds(name, i, i + 1))
        for key, values in batched.items():
            span = float(np.ptp(values)) if values.size else 0.0
            if span > 0 and key in alone:
                diff = float(np.max(np.abs(alone[key][0] - values[i])))
                worst = max(worst, diff / span)
    return round(worst, 6)


def validate(
    source: SourceModel,
    runner: Runner,
    data: Dataset,
    advance: Callable[[int], None] = lambda n: None,
    batch_size: int = 64,
    latency_runs: int = 100,
) -> Validation:
    """Run source and artifact on ``data`` (every input) and measure how far apart they are."""
    name = source.inputs[0].name
    ref_parts: list[dict[str, NDArray[np.float32]]] = []
    art_parts: list[dict[str, NDArray[np.float32]]] = []
    for start in range(0, len(data), batch_size):
        batch = data.feeds(name, start, start + batch_size)
        ref_parts.append(source.predict(batch))
        art_parts.append(runner.run(batch))
        advance(len(next(iter(batch.values()))))
    ref = {k: np.concatenate([p[k] for p in ref_parts]) for k in ref_parts[0]}
    art = {k: np.concatenate([p[k] for p in art_parts]) for k in art_parts[0]}
    report: dict[str, Any] = {"outputs": output_errors(ref, art)}
    warnings = []
    sqnrs = [v["sqnr_db"] for v in report["outputs"].values() if v["sqnr_db"] is not None]
    report["sqnr_db"] = min(sqnrs) if sqnrs else None
    nonfinite = sum(v["nonfinite_values"] for v in report["outputs"].values())
    if nonfinite:
        warnings.append(
            f"{nonfinite} output values are NaN/Inf in the artifact (overflow, e.g. in float16)"
        )
    report.update(judge(ref, art, data.y))
    dependence = batch_dependence(runner, data, name, art)
    report["batch_dependence"] = dependence
    if dependence > BATCH_DEPENDENCE_WARN:
        warnings.append(
            f"a sample's outputs depend on the batch it runs in: run alone, they differ from "
            f"the same sample's in a batch by up to {dependence:.1%} of the outputs' range "
            "(activations quantized per batch, as dynamic quantization does); the agent "
            "batches concurrent requests, so serve it with max_batch_size = 1 where one "
            "request's answer must not depend on another's"
        )
    latency = measure_latency(runner.run, data.feeds(name), runs=latency_runs)
    report["latency_ms"] = latency.to_dict()
    return Validation(report=report, artifact_outputs=art, warnings=warnings)
