"""Drift statistics on histograms that share bin edges (pure NumPy).

Every function compares a reference histogram ``r`` (counts from the bundle manifest's
reference profile) with a current histogram ``c`` (counts summed over the sliding window) on
the same bins, including the two open overflow bins. They take arrays of shape ``(..., B)``
and reduce over the last axis, so one call compares thousands of statistics at once; rows of
different bin counts are padded on the right with empty bins (:func:`stack`), which changes
no statistic below.

Shares are ``p = counts / counts.sum()``. Formulas, as the common tools define them:

* **PSI** (population stability index) ``= Σ (c − r) · ln(c / r)`` on shares. An empty bin
  would make it infinite, so zero shares are replaced first, per row, as Evidently does:
  by ``1e-4``, or by (smallest non-zero share) / 1e6 when that smallest share is itself
  ``≤ 1e-4``. Only PSI (and class PSI) uses this epsilon; the others need none.
* **Jensen-Shannon distance**: the square root of the JS divergence in base 2, in [0, 1]
  (what ``scipy.spatial.distance.jensenshannon(r, c, base=2)`` returns).
* **KS**: the largest gap between the two binned CDFs. The CDFs are only compared at bin
  edges, so this is a *lower bound* of the KS statistic of the raw samples.
* **Wasserstein (normed)**: the earth mover's distance between the two binned distributions,
  each bin's mass placed at one position, divided by the reference standard deviation
  (Evidently's "normed" variant; the std comes from the reference histogram's exact moments,
  floored at 1e-3 as Evidently does). Positions: an inner bin's midpoint; the open bin below
  the first edge at half the first inner bin's width below that edge, the open bin above the
  last edge at half the last inner bin's width above it. The same as
  ``scipy.stats.wasserstein_distance(pos, pos, r, c) / std``.
* **Chi-square** on class counts: the two-sample test of homogeneity of the 2 × k table of
  reference and current counts (both are samples): expected counts from the pooled shares,
  statistic ``Σ (o − e)² / e`` over both rows, p-value from the chi-square distribution with
  ``k' − 1`` degrees of freedom, ``k'`` the classes seen in either sample
  (``scipy.stats.chi2_contingency(..., correction=False)``); classes expected fewer than 5
  times in the smaller sample are tested together. Treating the reference shares as
  exact instead (``scipy.stats.chisquare``) ignores the reference's own noise: with equal
  sizes its statistic is about twice a chi-square variable, and on unchanged data it reads
  p < 0.05 far more often than 5% of the time.

How surprising each figure is under no drift, for both sample sizes and the bins, is in
:mod:`edgedl.collector.significance`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

EPSILON = 1e-4
MIN_STD = 1e-3
MIN_EXPECTED = 5.0


def stack(rows: Sequence[ArrayLike]) -> tuple[FloatArray, NDArray[np.bool_]]:
    """Stack 1-D arrays of different lengths, padding on the right: ``(matrix, real-bin mask)``.

    Padding repeats a row's last value, so padded positions stay non-decreasing; pad counts
    with :func:`pad_counts` instead.
    """
    width = max((np.size(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.float64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        a = np.asarray(r, dtype=np.float64).ravel()
        out[i, : a.size] = a
        out[i, a.size :] = a[-1] if a.size else 0.0
        mask[i, : a.size] = True
    return out, mask


def pad_counts(rows: Sequence[ArrayLike], width: int) -> FloatArray:
    """Stack 1-D count arrays into ``width`` columns, padding with empty bins."""
    out = np.zeros((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        a = np.asarray(r, dtype=np.float64).ravel()
        out[i, : a.size] = a
    return out


def shares(counts: ArrayLike) -> FloatArray:
    """Counts as shares of their row's total (a row of zeros stays zeros)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum(axis=-1, keepdims=True)
    out: FloatArray = np.divide(c, total, out=np.zeros_like(c), where=total > 0)
    return out


def fill_empty(p: ArrayLike) -> FloatArray:
    """Replace zero shares by Evidently's epsilon (see the module docstring), per row."""
    p = np.asarray(p, dtype=np.float64)
    smallest = np.min(np.where(p > 0, p, np.inf), axis=-1, keepdims=True)
    eps = np.where(smallest <= EPSILON, smallest / 1e6, EPSILON)
    return np.where(p > 0, p, eps)


def psi(
    reference: ArrayLike, current: ArrayLike, mask: NDArray[np.bool_] | None = None
) -> FloatArray:
    """Population stability index ``Σ (c − r) ln(c / r)`` on epsilon-filled shares.

    ``mask`` (from :func:`stack`) leaves padding bins out of the sum.
    """
    r = fill_empty(shares(reference))
    c = fill_empty(shares(current))
    terms = (c - r) * np.log(c / r)
    if mask is not None:
        terms = np.where(mask, terms, 0.0)
    return np.asarray(np.sum(terms, axis=-1), dtype=np.float64)


def js_distance(reference: ArrayLike, current: ArrayLike) -> FloatArray:
    """Jensen-Shannon distance, base 2 (square root of the divergence), in [0, 1]."""
    r = shares(reference)
    c = shares(current)
    m = (r + c) / 2.0

    def kl(p: FloatArray) -> FloatArray:
        ratio = np.divide(p, m, out=np.ones_like(p), where=p > 0)
        return np.asarray(np.sum(p * np.log2(ratio), axis=-1), dtype=np.float64)

    div = np.clip((kl(r) + kl(c)) / 2.0, 0.0, 1.0)
    return np.asarray(np.sqrt(div), dtype=np.float64)


def ks_binned(reference: ArrayLike, current: ArrayLike) -> FloatArray:
    """Largest gap between the binned CDFs: a lower bound of the samples' KS statistic."""
    gap = np.abs(np.cumsum(shares(reference), axis=-1) - np.cumsum(shares(current), axis=-1))
    return np.asarray(gap.max(axis=-1), dtype=np.float64)


def bin_positions(edges: ArrayLike) -> FloatArray:
    """Where each bin's mass sits for Wasserstein: midpoints, open bins half a width out."""
    e = np.asarray(edges, dtype=np.float64)
    mids = (e[:-1] + e[1:]) / 2.0
    below = e[0] - (e[1] - e[0]) / 2.0
    above = e[-1] + (e[-1] - e[-2]) / 2.0
    return np.concatenate([[below], mids, [above]])


def wasserstein_binned(
    reference: ArrayLike, current: ArrayLike, positions: ArrayLike, reference_std: ArrayLike
) -> FloatArray:
    """Wasserstein-1 distance between binned distributions, divided by the reference std.

    ``positions`` has the shape of the counts (padded rows: any increasing values).
    """
    pos = np.asarray(positions, dtype=np.float64)
    gap = np.abs(np.cumsum(shares(reference), axis=-1) - np.cumsum(shares(current), axis=-1))
    dist = np.sum(gap[..., :-1] * np.diff(pos, axis=-1), axis=-1)
    std = np.maximum(np.asarray(reference_std, dtype=np.float64), MIN_STD)
    return np.asarray(dist / std, dtype=np.float64)


def compare(
    reference: ArrayLike,
    current: ArrayLike,
    positions: ArrayLike,
    reference_std: ArrayLike,
    mask: NDArray[np.bool_] | None = None,
) -> dict[str, FloatArray]:
    """PSI, JS distance, binned KS and normed Wasserstein at once, sharing the work.

    The same numbers as :func:`psi`, :func:`js_distance`, :func:`ks_binned` and
    :func:`wasserstein_binned`; shares and CDFs are computed once.
    """
    r = shares(reference)
    c = shares(current)
    rf, cf = fill_empty(r), fill_empty(c)
    terms = (cf - rf) * np.log(cf / rf)
    if mask is not None:
        terms = np.where(mask, terms, 0.0)
    m = (r + c) / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_r = np.where(r > 0, r * np.log2(np.where(r > 0, r, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
        kl_c = np.where(c > 0, c * np.log2(np.where(c > 0, c, 1.0) / np.where(m > 0, m, 1.0)), 0.0)
    div = np.clip((kl_r.sum(axis=-1) + kl_c.sum(axis=-1)) / 2.0, 0.0, 1.0)
    gap = np.abs(np.cumsum(r, axis=-1) - np.cumsum(c, axis=-1))
    pos = np.asarray(positions, dtype=np.float64)
    dist = np.sum(gap[..., :-1] * np.diff(pos, axis=-1), axis=-1)
    std = np.maximum(np.asarray(reference_std, dtype=np.float64), MIN_STD)
    return {
        "psi": np.asarray(terms.sum(axis=-1), dtype=np.float64),
        "js": np.asarray(np.sqrt(div), dtype=np.float64),
        "ks": np.asarray(gap.max(axis=-1), dtype=np.float64),
        "wasserstein": np.asarray(dist / std, dtype=np.float64),
    }


def homogeneity(reference: ArrayLike, current: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Chi-square test of homogeneity of count rows: ``(statistic, p_value)`` per row.

    Expected counts come from the pooled shares of both rows; bins empty in both count no
    degree of freedom. A row with an empty sample gives ``(0, 1)``.
    """
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    n_r = r.sum(axis=-1, keepdims=True)
    n_c = c.sum(axis=-1, keepdims=True)
    pooled = (r + c) / np.maximum(n_r + n_c, 1.0)
    e_r, e_c = pooled * n_r, pooled * n_c
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pooled > 0, (r - e_r) ** 2 / e_r + (c - e_c) ** 2 / e_c, 0.0)
    empty = (n_r[..., 0] <= 0) | (n_c[..., 0] <= 0)
    stat = np.asarray(np.where(empty, 0.0, terms.sum(axis=-1)), dtype=np.float64)
    dof = np.maximum(np.sum((r + c) > 0, axis=-1) - 1, 1)
    p = np.vectorize(chi2_sf, otypes=[np.float64])(stat, dof)
    return stat, np.asarray(np.where(empty, 1.0, p), dtype=np.float64)


def chi_square(reference: ArrayLike, current: ArrayLike) -> tuple[float, float]:
    """``(statistic, p_value)``: reference and current class counts, two-sample homogeneity.

    Classes that the pooled shares expect fewer than :data:`MIN_EXPECTED` of in the smaller
    sample are tested as one class (Cochran's rule): a class expecting a fraction of a count
    would make the chi-square approximation anti-conservative.
    """
    observed = np.asarray(current, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if float(observed.sum()) <= 0 or observed.size < 2:
        return 0.0, 1.0
    pooled = ref + observed
    smaller = min(float(ref.sum()), float(observed.sum()))
    rare = pooled / max(float(pooled.sum()), 1.0) * smaller < MIN_EXPECTED
    if rare.sum() >= 2 and (~rare).any():
        ref = np.append(ref[~rare], ref[rare].sum())
        observed = np.append(observed[~rare], observed[rare].sum())
    stat, p = homogeneity(ref, observed)
    return float(stat), float(p)


def chi2_sf(x: float, dof: int) -> float:
    """Survival function of the chi-square distribution: ``Q(dof / 2, x / 2)``."""
    if x <= 0:
        return 1.0
    return _gamma_q(dof / 2.0, x / 2.0)


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma function (series or continued fraction)."""
    log_prefix = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    # Lentz's continued fraction for Q.
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def percentile(
    counts: Sequence[float] | NDArray[Any],
    edges: Sequence[float] | NDArray[Any],
    q: float,
    floor: float = 0.0,
) -> float:
    """The ``q`` quantile (0..1) of a histogram, interpolated linearly inside its bin.

    The open bin below the first edge spans ``[floor, edges[0])``; a quantile that falls in
    the open bin above the last edge is reported as the last edge (a lower bound).
    """
    return percentiles(counts, edges, [q], floor)[0]


def percentiles(
    counts: Sequence[float] | NDArray[Any],
    edges: Sequence[float] | NDArray[Any],
    qs: Sequence[float],
    floor: float = 0.0,
) -> list[float]:
    """Several quantiles of one histogram at once (see :func:`percentile`); NaN when empty."""
    # Plain Python: histograms have a few dozen bins, where NumPy's call overhead dominates.
    c = [float(x) for x in counts]
    e = [float(x) for x in edges]
    total = sum(c)
    if total <= 0:
        return [float("nan")] * len(qs)
    out = []
    for q in qs:
        target = q * total
        before = 0.0
        value = e[-1]
        for i, n in enumerate(c[:-1]):
            if before + n >= target and n > 0:
                lo = floor if i == 0 else e[i - 1]
                value = lo + (e[i] - lo) * min(max((target - before) / n, 0.0), 1.0)
                break
            before += n
        out.append(value)
    return out


__all__ = [
    "EPSILON",
    "bin_positions",
    "chi2_sf",
    "chi_square",
    "compare",
    "fill_empty",
    "homogeneity",
    "js_distance",
    "ks_binned",
    "pad_counts",
    "percentile",
    "percentiles",
    "psi",
    "shares",
    "stack",
    "wasserstein_binned",
]
