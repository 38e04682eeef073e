"""Calibration diagnostics: what is wrong with the data before it sets quantization ranges.

Quantization ranges come from the calibration data, so data that is preprocessed differently
from what the model sees (0–255 against 0–1, another normalisation), too small, made of blank
samples, or random noise (tensorflow#58206) ruins int8 accuracy without any error. Each check
here gives a :class:`Finding` with its numbers; ``convert`` puts them in the report and shows
them as warnings. NaN and Inf are refused earlier, by the data loader, naming the sample.

``convert`` diagnoses the samples calibration uses (at most ``--calibration-samples``, drawn at
random from a larger file), so every count is relative to those; a subset's messages say how
many the file held.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .data import Dataset

MIN_SAMPLES = 100
SPAN_RATIO = 1.8  # calibration and validation value spans this many times apart
MEAN_SHIFT = 0.25  # means this many standard deviations apart
# ...and this many standard errors apart: two small draws of the same data differ by chance
# (16 and 8 photo crops' means are 0.4 std, 2.2 standard errors apart), a different
# preprocessing by far more.
MEAN_SHIFT_Z = 3.0
CONSTANT_SHARE = 0.05  # this share of samples with a single value
RANDOM_CORRELATION = 0.1  # features less correlated than this, on average, look independent
RANDOM_MEAN_SPREAD = 0.1  # feature means closer than this (in feature stds) look identical
_MAX_FEATURES = 64  # features sampled for the correlation check


@dataclass
class Finding:
    """One diagnostic that fired: which check, a message for the user, and its numbers."""

    check: str
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"check", "message", "numbers"}``."""
        return asdict(self)


def value_summary(x: NDArray[np.float32]) -> dict[str, float]:
    """Min, max, mean, std and the 0.1/99.9 percentiles of every value in ``x``."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    lo, hi = np.percentile(flat, [0.1, 99.9])
    return {
        "min": _round(flat.min()),
        "max": _round(flat.max()),
        "mean": _round(flat.mean()),
        "std": _round(flat.std()),
        "p0.1": _round(lo),
        "p99.9": _round(hi),
    }


def _round(v: Any) -> float:
    return float(f"{float(v):.4g}")


def diagnose(calibration: Dataset, validation: Dataset | None) -> list[Finding]:
    """Every finding about ``calibration`` (compared with ``validation`` when it is other data)."""
    findings = [*_too_few(calibration), *_constant(calibration), *_random(calibration)]
    if validation is not None and validation is not calibration:
        findings += _mismatch(calibration, validation)
    return findings


def _drawn(cal: Dataset) -> str:
    """How a drawn subset came about, for a message (empty for the whole data)."""
    if cal.drawn_from is None:
        return ""
    return f" (drawn at random from the {cal.drawn_from} in the data; see --calibration-samples)"


def _drawn_numbers(cal: Dataset) -> dict[str, Any]:
    return {} if cal.drawn_from is None else {"samples_in_data": cal.drawn_from}


def _too_few(cal: Dataset) -> list[Finding]:
    if len(cal) >= MIN_SAMPLES:
        return []
    return [
        Finding(
            "too_few_samples",
            f"only {len(cal)} calibration samples{_drawn(cal)} (fewer than {MIN_SAMPLES}): "
            "quantization ranges may not be representative",
            {"samples": len(cal), "minimum": MIN_SAMPLES, **_drawn_numbers(cal)},
        )
    ]


def _constant(cal: Dataset) -> list[Finding]:
    flat = cal.x.reshape(len(cal), -1)
    constant = np.ptp(flat, axis=1) == 0
    n = int(constant.sum())
    distinct = len(np.unique(flat, axis=0))
    # One sample is always "all the same": too_few_samples says what is wrong with it.
    if n <= CONSTANT_SHARE * len(cal) and (distinct > 1 or len(cal) == 1):
        return []
    values = sorted({_round(v) for v in flat[constant, 0]})[:5]
    return [
        Finding(
            "constant_samples",
            f"{n} of {len(cal)} calibration samples{_drawn(cal)} are constant (values "
            f"{', '.join(map(str, values)) or '-'}) and {distinct} are distinct: blank or "
            "repeated samples pull the ranges towards a few values",
            {
                "constant": n,
                "samples": len(cal),
                "distinct": distinct,
                "values": values,
                **_drawn_numbers(cal),
            },
        )
    ]


def _random(cal: Dataset) -> list[Finding]:
    """Independent, interchangeable features: what uniform or Gaussian noise looks like.

    Real inputs have correlated features (neighbouring pixels, audio samples, related columns)
    and features with different means (a border pixel is darker than the centre); noise drawn
    the same way for every feature has neither.
    """
    flat = cal.x.reshape(len(cal), -1).astype(np.float64)
    if len(cal) < 10 or flat.shape[1] < 4:
        return []
    std = flat.std(axis=0)
    varying = np.flatnonzero(std > 0)
    if varying.size < 4:
        return []
    pick = varying[np.linspace(0, varying.size - 1, min(_MAX_FEATURES, varying.size)).astype(int)]
    corr = np.atleast_2d(np.corrcoef(flat[:, pick], rowvar=False))
    off = np.abs(corr[~np.eye(len(pick), dtype=bool)])
    mean_corr = float(np.nanmean(off))
    spread = float(flat[:, varying].mean(axis=0).std() / std[varying].mean())
    # Sample correlations of independent features are about 1/sqrt(n), not 0.
    bound = max(RANDOM_CORRELATION, 3.0 / math.sqrt(len(cal)))
    if mean_corr >= bound or spread >= RANDOM_MEAN_SPREAD:
        return []
    return [
        Finding(
            "looks_random",
            f"calibration data looks like random noise: its features are uncorrelated "
            f"(mean |correlation| {mean_corr:.3f}) and interchangeable (feature means within "
            f"{spread:.3f} feature std of each other); calibrate on real inputs, random data "
            "ruins int8 accuracy",
            {"mean_abs_correlation": _round(mean_corr), "feature_mean_spread": _round(spread)},
        )
    ]


def _mean_difference_z(cal: Dataset, val: Dataset) -> float:
    """How many standard errors apart the two sets' means are, from the spread of their
    samples' own means (the unit whose draw varies)."""
    per_c = cal.x.reshape(len(cal), -1).astype(np.float64).mean(axis=1)
    per_v = val.x.reshape(len(val), -1).astype(np.float64).mean(axis=1)
    se = math.sqrt(per_c.var() / len(per_c) + per_v.var() / len(per_v))
    diff = abs(float(per_c.mean() - per_v.mean()))
    return diff / se if se > 0 else (math.inf if diff > 0 else 0.0)


def _mismatch(cal: Dataset, val: Dataset) -> list[Finding]:
    c, v = value_summary(cal.x), value_summary(val.x)
    span_c, span_v = c["p99.9"] - c["p0.1"], v["p99.9"] - v["p0.1"]
    ratio = max(span_c, span_v) / min(span_c, span_v) if min(span_c, span_v) > 0 else math.inf
    shift = abs(c["mean"] - v["mean"]) / max(c["std"], v["std"], 1e-12)
    z = _mean_difference_z(cal, val)
    if ratio <= SPAN_RATIO and (shift <= MEAN_SHIFT or z <= MEAN_SHIFT_Z):
        return []
    ratio_text = "inf" if math.isinf(ratio) else f"{ratio:.3g}"
    return [
        Finding(
            "range_mismatch",
            f"calibration and validation data are scaled differently: calibration values "
            f"[{c['min']:g}, {c['max']:g}] (mean {c['mean']:g}, std {c['std']:g}), validation "
            f"[{v['min']:g}, {v['max']:g}] (mean {v['mean']:g}, std {v['std']:g}); spans "
            f"{ratio_text}x apart, means {shift:.2f} std apart. Preprocess both as the device "
            "will",
            {
                "calibration": c,
                "validation": v,
                "span_ratio": None if math.isinf(ratio) else _round(ratio),
                "mean_shift_std": _round(shift),
                "mean_shift_z": None if math.isinf(z) else _round(z),
            },
        )
    ]
