"""Drift decisions: "significant AND large enough to matter", one result type for every test.

A figure such as PSI or normed Wasserstein is an **effect size**: how different the current
histogram is from the reference. It is shown as it is, and it alerts only when two things
hold at once:

* **significant**: its p-value under no drift, for both sample sizes and the bins
  (:mod:`edgedl.collector.significance`), is below ``false_alarm_rate`` (default 0.01), so on
  unchanged data at most that share of judged windows alerts on it;
* **large enough**: the effect is at least the minimum the user set for that figure
  (``psi_alert``, ``js_alert``, ``ks_alert``, ``wasserstein_alert``, ``class_psi_alert``), so a
  large sample does not alert on a difference nobody cares about.

Every decision, whatever the test (single window or sequential), is a :class:`DriftDecision`
and says which of the two held in its ``reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import drift, significance
from .config import DriftConfig
from .references import ReferenceModel

FloatArray = NDArray[np.float64]

HISTOGRAM_TESTS = ("psi", "js", "ks", "wasserstein")


@dataclass(frozen=True)
class DriftDecision:
    """One drift decision, in the same shape for every test (as Alibi Detect's detectors).

    ``p_value`` is set by single-window tests, ``score`` by sequential ones; ``threshold`` is
    what it was compared with (the false-alarm rate for a p-value, the alarm level for a
    score). ``effect`` and ``min_effect`` are the effect size and the minimum that matters;
    ``judged`` is False when there were too few samples to decide (never drift then).
    """

    statistic: str
    test: str
    effect: float | None
    min_effect: float
    p_value: float | None
    score: float | None
    threshold: float
    samples: int
    judged: bool
    is_drift: bool
    reason: str

    @property
    def significant(self) -> bool:
        """Whether the test part held (p below its threshold, or score above it)."""
        if self.p_value is not None:
            return self.p_value < self.threshold
        return self.score is not None and self.score > self.threshold

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers as None)."""
        return {
            "statistic": self.statistic,
            "test": self.test,
            "effect": _finite(self.effect),
            "min_effect": self.min_effect,
            "p_value": _finite(self.p_value),
            "score": _finite(self.score),
            "threshold": self.threshold,
            "samples": self.samples,
            "judged": self.judged,
            "is_drift": self.is_drift,
            "reason": self.reason,
        }


def decide(
    statistic: str,
    test: str,
    effect: float,
    min_effect: float,
    p_value: float,
    alpha: float,
    samples: int,
    judged: bool,
) -> DriftDecision:
    """Decide one single-window test: drift when ``p < alpha`` and ``|effect| >= min_effect``."""
    significant = bool(p_value < alpha)
    large = bool(abs(effect) >= min_effect)
    if not judged:
        reason = f"too few samples ({samples}) to judge"
    elif significant and large:
        reason = (
            f"drift: significant (p = {p_value:.2g} < {alpha:g}) and large enough "
            f"({test} {effect:.3g} >= {min_effect:g})"
        )
    elif significant:
        reason = (
            f"significant (p = {p_value:.2g} < {alpha:g}) but small "
            f"({test} {effect:.3g} < {min_effect:g})"
        )
    else:
        reason = f"not significant (p = {p_value:.2g} >= {alpha:g})"
    return DriftDecision(
        statistic=statistic,
        test=test,
        effect=effect,
        min_effect=min_effect,
        p_value=p_value,
        score=None,
        threshold=alpha,
        samples=samples,
        judged=judged,
        is_drift=judged and significant and large,
        reason=reason,
    )


def min_effects(cfg: DriftConfig) -> dict[str, float]:
    """The minimum effect of each histogram test, from the ``[drift]`` config."""
    return {
        "psi": cfg.psi_alert,
        "js": cfg.js_alert,
        "ks": cfg.ks_alert,
        "wasserstein": cfg.wasserstein_alert,
    }


def decide_histograms(
    stats: list[str],
    figures: dict[str, FloatArray],
    p_values: dict[str, FloatArray],
    samples: FloatArray,
    cfg: DriftConfig,
    tests: tuple[str, ...] = HISTOGRAM_TESTS,
) -> list[list[DriftDecision]]:
    """Per statistic (rows of ``figures``), a decision per test; judged from ``min_samples``."""
    bound = min_effects(cfg)
    return [
        [
            decide(
                stat,
                test,
                float(figures[test][i]),
                bound[test],
                float(p_values[test][i]),
                cfg.false_alarm_rate,
                int(samples[i]),
                bool(samples[i] >= cfg.min_samples),
            )
            for test in tests
        ]
        for i, stat in enumerate(stats)
    ]


@dataclass(frozen=True)
class HistogramJudgement:
    """Every figure, p-value and decision of current counts against a reference, per row."""

    figures: dict[str, FloatArray]
    p_values: dict[str, FloatArray]
    decisions: list[list[DriftDecision]]


def judge_counts(
    reference: ReferenceModel,
    current: NDArray[Any],
    samples: NDArray[Any],
    cfg: DriftConfig,
    tests: tuple[str, ...] = HISTOGRAM_TESTS,
) -> HistogramJudgement:
    """Compare current counts (rows of ``reference.stats``) with the reference and decide.

    ``samples`` is how many values each row counted (judged from ``cfg.min_samples``).
    Integer counts (the sliding windows' exact totals) are taken as floats.
    """
    current = np.asarray(current, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    figures = drift.compare(
        reference.counts, current, reference.positions, reference.std, reference.mask
    )
    p_values = histogram_p_values(
        reference.counts, current, figures, reference.null, reference.mask
    )
    decisions = decide_histograms(reference.stats, figures, p_values, samples, cfg, tests)
    return HistogramJudgement(figures, p_values, decisions)


def histogram_p_values(
    reference: FloatArray,
    current: FloatArray,
    figures: dict[str, FloatArray],
    null: significance.BridgeNull,
    mask: NDArray[np.bool_] | None = None,
) -> dict[str, FloatArray]:
    """P-values of PSI, JS, binned KS and normed Wasserstein under no drift, per row.

    ``figures`` is what :func:`~edgedl.collector.drift.compare` returned for these counts;
    ``null`` was drawn for ``reference``. PSI and JS are tested on the counts with the open
    bins merged into their neighbours (:func:`~significance.merge_open_bins`).
    """
    n_ref = reference.sum(axis=-1)
    n_cur = current.sum(axis=-1)
    r_m = significance.merge_open_bins(reference, mask)
    c_m = significance.merge_open_bins(current, mask)
    dof = significance.degrees_of_freedom(r_m, c_m)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "psi": significance.psi_p_value(drift.psi(r_m, c_m), n_ref, n_cur, dof),
            "js": significance.js_p_value(drift.js_distance(r_m, c_m), n_ref, n_cur, dof),
            "ks": null.ks_p_value(figures["ks"], n_ref, n_cur),
            "wasserstein": null.wasserstein_p_value(figures["wasserstein"], n_ref, n_cur),
        }


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


__all__ = [
    "HISTOGRAM_TESTS",
    "DriftDecision",
    "HistogramJudgement",
    "decide",
    "decide_histograms",
    "histogram_p_values",
    "judge_counts",
    "min_effects",
]
