"""Classification quality from raw scores: the one computation the HTML page and JSON share.

Per-class precision, recall and F1 and the confusion matrix come from scikit-learn;
calibration is the expected calibration error (ECE) over equal-width confidence bins and
the per-bin accuracy and confidence a reliability diagram draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

ECE_BINS = 10
CONFIDENT = 0.9  # a prediction at least this sure counts as "confident"


def as_probabilities(scores: NDArray[Any]) -> NDArray[np.float64]:
    """Scores as probabilities: kept when rows already are a distribution, else softmaxed.

    NaN scores stay NaN (a sample the model could not score has no prediction).
    """
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s).all(axis=1)
    rows = s[finite]
    if rows.size and (rows.min() >= -1e-6) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-2):
        return s
    shifted = s - np.nanmax(np.where(np.isfinite(s), s, np.nan), axis=1, keepdims=True)
    e = np.exp(shifted)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    out[~finite] = np.nan
    return out


def predictions(probs: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Top-1 class and its probability per sample (class -1, confidence 0 where NaN)."""
    ok = np.isfinite(probs).all(axis=1)
    top = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1).astype(np.int64)
    conf = np.where(ok, np.nan_to_num(probs, nan=0.0).max(axis=1), 0.0)
    return top, conf


def reliability(
    confidence: NDArray[np.float64], correct: NDArray[np.bool_], bins: int = ECE_BINS
) -> dict[str, Any]:
    """Expected calibration error and the reliability diagram's bins.

    ECE = Σ_b (n_b / n) · |accuracy_b − mean confidence_b| over ``bins`` equal-width bins of
    the top-1 confidence (a confidence of exactly 1 falls in the last bin).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    n = max(len(confidence), 1)
    ece = 0.0
    rows = []
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        acc = float(correct[mask].mean()) if count else None
        conf = float(confidence[mask].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)  # type: ignore[operator]
        rows.append(
            {"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
             "accuracy": acc, "confidence": conf}
        )  # fmt: skip
    return {"ece": float(ece), "bins": rows}


def classification_metrics(
    y_true: NDArray[np.int64], scores: NDArray[Any], class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix and calibration."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    probs = as_probabilities(scores)
    y_pred, conf = predictions(probs)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    correct = y_pred == y_true
    calib = reliability(conf, correct)
    confident = conf >= CONFIDENT
    return {
        "samples": len(y_true),
        "accuracy": float(correct.mean()),
        "macro_f1": float(np.mean(f1)),
        "per_class": [
            {
                "class": name,
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "ece": calib["ece"],
        "reliability": calib["bins"],
        "mean_confidence_correct": _mean(conf[correct]),
        "mean_confidence_wrong": _mean(conf[~correct]),
        "confidently_wrong_rate": float(np.mean(confident & ~correct)),
    }


def agreement(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Share of samples whose top-1 class is the same under both score arrays."""
    top_a, _ = predictions(as_probabilities(a))
    top_b, _ = predictions(as_probabilities(b))
    return float(np.mean(top_a == top_b))


def class_drops(reference: dict[str, Any], artifact: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class: recall of the reference and of the artifact, and the drop in points."""
    return [
        {"class": r["class"], "reference_recall": r["recall"], "artifact_recall": a["recall"],
         "drop_pts": round((r["recall"] - a["recall"]) * 100.0, 4)}
        for r, a in zip(reference["per_class"], artifact["per_class"], strict=True)
    ]  # fmt: skip


def _mean(values: NDArray[np.float64]) -> float | None:
    return float(values.mean()) if values.size else None
