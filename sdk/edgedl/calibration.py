"""Accuracy estimated without labels (confidence-based performance estimation, as NannyML's CBPE).

At convert time :func:`fit_calibration` learns, on the validation set, how often the model
is right for each bin of its top-1 confidence, on exactly the bin edges of the reference
profile's ``output/{name}/top1_confidence`` histogram; the :class:`Calibration` is stored in
the bundle manifest (``calibration``). Every telemetry window already carries that histogram,
so :meth:`Calibration.estimate` gives the window's expected number of correct predictions and
its variance: sums over windows, devices and fleets stay exact.

Per bin ``b`` with ``m_b`` validation predictions of which ``c_b`` were right,
``p_b = (c_b + 1) / (m_b + 2)``. A bin the validation set left empty (always the two open
bins, below the lowest and above the highest confidence seen) takes the nearest filled bin's
ratio of ``p`` to its middle confidence, times its own middle confidence (the lower open bin's
middle is between ``1 / classes`` and the first edge); its predictions are reported as
``extrapolated``, outside what the validation set supports.

For a window with ``n_b`` predictions per bin (``N`` in all): expected correct
``E = sum n_b p_b``; variance ``V = sum n_b p_b (1 - p_b) + sum n_b^2 p_b (1 - p_b) / (m_b + 2)``
(which predictions happen to be right, plus the calibration's own sampling error);
estimated accuracy ``E / N`` with standard error ``sqrt(V) / N``.

It assumes the probability of being right at a given confidence stays what it was on the
validation set: it follows covariate shift that moves confidences, and is blind to concept
shift (the same inputs now meaning other classes), where it must and does fail
(bench/estimated_accuracy.py measures both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DataError


@dataclass(frozen=True)
class Estimate:
    """Expected correct predictions among ``predictions``, with variance; they add up."""

    predictions: int
    expected_correct: float
    variance: float
    extrapolated: int = 0

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(
            self.predictions + other.predictions,
            self.expected_correct + other.expected_correct,
            self.variance + other.variance,
            self.extrapolated + other.extrapolated,
        )

    @property
    def accuracy(self) -> float | None:
        """Estimated accuracy, or None when nothing was predicted."""
        return self.expected_correct / self.predictions if self.predictions else None

    @property
    def std(self) -> float | None:
        """Standard error of :attr:`accuracy`."""
        return math.sqrt(self.variance) / self.predictions if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        """The estimate as the collector's API shows it (95% interval: +-1.96 std)."""
        acc, std = self.accuracy, self.std
        return {
            "predictions": self.predictions,
            "accuracy": acc,
            "std": std,
            "low": None if acc is None or std is None else max(0.0, acc - 1.96 * std),
            "high": None if acc is None or std is None else min(1.0, acc + 1.96 * std),
            "extrapolated_share": self.extrapolated / self.predictions
            if self.predictions
            else None,
        }


@dataclass(frozen=True)
class Calibration:
    """P(correct) per bin of the top-1 confidence (see the module docstring)."""

    statistic: str
    edges: tuple[float, ...]
    correct: tuple[int, ...]
    total: tuple[int, ...]
    classes: int

    def __post_init__(self) -> None:
        n = len(self.edges) + 1
        if len(self.correct) != n or len(self.total) != n or len(self.edges) < 1:
            raise DataError("calibration: correct and total need one count per bin")
        if any(c < 0 or c > t for c, t in zip(self.correct, self.total, strict=True)):
            raise DataError("calibration: a bin has more correct than total predictions")
        if self.classes < 2:
            raise DataError("calibration: needs at least 2 classes")

    def middles(self) -> NDArray[np.float64]:
        """The middle confidence of each bin (open bins: up to 1/classes and 1)."""
        e = np.asarray(self.edges, dtype=np.float64)
        low = min(1.0 / self.classes, float(e[0]))
        bounds: NDArray[np.float64] = np.concatenate([[low], e, [max(1.0, float(e[-1]))]])
        middles: NDArray[np.float64] = (bounds[:-1] + bounds[1:]) / 2.0
        return middles

    def p_correct(self) -> NDArray[np.float64]:
        """P(correct) of each bin; empty bins extrapolated from the nearest filled one."""
        total = np.asarray(self.total, dtype=np.float64)
        p = (np.asarray(self.correct, dtype=np.float64) + 1.0) / (total + 2.0)
        filled = np.flatnonzero(total > 0)
        if filled.size == 0:
            return np.full(total.size, 1.0 / self.classes)
        mid = self.middles()
        for i in np.flatnonzero(total == 0):
            j = filled[np.argmin(np.abs(filled - i))]
            ratio = p[j] / mid[j] if mid[j] > 0 else 1.0
            p[i] = min(1.0, max(0.0, ratio * mid[i]))
        return p

    def estimate(self, counts: list[int] | NDArray[Any]) -> Estimate:
        """The estimate for a window's histogram counts on :attr:`edges`."""
        n = np.asarray(counts, dtype=np.float64)
        if n.size != len(self.edges) + 1:
            raise DataError("the histogram's bins do not match the calibration's")
        p = self.p_correct()
        total = np.asarray(self.total, dtype=np.float64)
        spread = p * (1.0 - p)
        variance = float((n * spread).sum() + (n * n * spread / (total + 2.0)).sum())
        return Estimate(
            predictions=int(n.sum()),
            expected_correct=float((n * p).sum()),
            variance=variance,
            extrapolated=int(n[total == 0].sum()),
        )

    def to_dict(self) -> dict[str, Any]:
        """The calibration as the manifest stores it."""
        return {
            "method": "histogram_binning",
            "statistic": self.statistic,
            "edges": list(self.edges),
            "correct": list(self.correct),
            "total": list(self.total),
            "classes": self.classes,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Read a manifest's ``calibration``; :class:`DataError` when it is malformed."""
        try:
            return cls(
                statistic=str(data["statistic"]),
                edges=tuple(float(e) for e in data["edges"]),
                correct=tuple(int(c) for c in data["correct"]),
                total=tuple(int(t) for t in data["total"]),
                classes=int(data["classes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed calibration in the manifest: {exc}") from exc


def fit_calibration(
    statistic: str,
    edges: NDArray[Any] | list[float],
    confidence: NDArray[Any],
    correct: NDArray[Any],
    classes: int,
) -> Calibration:
    """Count, per bin of ``edges`` (binned as :class:`~edgedl.profile.Histogram` bins), the
    validation predictions and those that were right."""
    e = np.asarray(edges, dtype=np.float64)
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    right = np.asarray(correct, dtype=bool).ravel()
    keep = np.isfinite(conf)
    conf, right = conf[keep], right[keep]
    idx = np.searchsorted(e, conf, side="right")
    idx[conf == e[-1]] = e.size - 1  # the last inner bin is closed on the right
    total = np.bincount(idx, minlength=e.size + 1)
    hits = np.bincount(idx, weights=right.astype(np.float64), minlength=e.size + 1)
    return Calibration(
        statistic=statistic,
        edges=tuple(float(x) for x in e),
        correct=tuple(round(float(h)) for h in hits),
        total=tuple(int(t) for t in total),
        classes=classes,
    )


__all__ = ["Calibration", "Estimate", "fit_calibration"]
