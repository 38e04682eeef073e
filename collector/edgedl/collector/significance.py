"""Two-sample significance of the drift figures on binned data (pure NumPy, no SciPy).

Both histograms are samples: the reference profile holds ``n_ref`` values, the current
sliding window ``n_cur``. Under no drift both come from one distribution, and every figure of
:mod:`edgedl.collector.drift` has a sampling noise set by ``(n_ref, n_cur)`` and the bins.
Each function here turns a figure into a p-value under that null, rows at a time:

* **chi-square of homogeneity** on the bins (:func:`~edgedl.collector.drift.homogeneity`):
  the 2 × k table of reference and current counts, expected counts from the pooled shares,
  ``X² = Σ (o − e)² / e`` with ``k' − 1`` degrees of freedom, ``k'`` the bins that hold
  anything in either sample (what ``scipy.stats.chi2_contingency`` computes).
* **PSI** (:func:`psi_p_value`): for small differences ``PSI ≈ Σ (c − r)² / p``, and under the
  null ``Σ (c − r)² / p ≈ (1/n_ref + 1/n_cur) · χ²`` with ``k' − 1`` degrees of freedom; so
  ``PSI / (1/n_ref + 1/n_cur)`` is referred to that chi-square.
* **Jensen-Shannon** (:func:`js_p_value`): the JS divergence in bits is
  ``≈ Σ (c − r)² / m / (8 ln 2)``; ``8 ln 2 · JS² / (1/n_ref + 1/n_cur)`` is referred to the
  same chi-square (with equal sizes it is the G-test of homogeneity).
* **binned KS and normed Wasserstein** (:class:`BridgeNull`): the gap between the two binned
  CDFs at the reference's edges, divided by ``sqrt(1/n_ref + 1/n_cur)``, tends to a Brownian
  bridge ``B(u_j)`` at the reference's cumulative shares ``u_j``. KS is ``max_j |B(u_j)|``,
  Wasserstein ``Σ_j w_j |B(u_j)|`` with ``w_j`` the distance between bin positions over the
  reference std. Neither has a closed form on arbitrary bins, so their null distributions are
  drawn once per reference (seeded, ``draws`` bridges) and kept as quantiles.

All are asymptotic: they hold when a bin expects a few counts or more (``min_samples`` of 200
on 10 bins gives 20). ``tests/collector/test_drift_tests.py`` checks the false-alarm rate of
each on seeded null samples, and ``bench/drift_power.py`` measures it at the sizes it names.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .drift import MIN_STD, chi2_sf, shares

FloatArray = NDArray[np.float64]

NULL_DRAWS = 10_000
CLOSED_FORM_DOF = 64
NULL_SEED = 20_251_130
# p-values at which the drawn null distributions are kept (log-spaced below 0.5).
_P_GRID = np.concatenate([np.geomspace(1e-4, 0.5, 120), np.linspace(0.5, 1.0, 21)[1:]])


def merge_open_bins(counts: ArrayLike, mask: NDArray[np.bool_] | None = None) -> FloatArray:
    """Counts with each open overflow bin added to its inner neighbour (for the tests).

    The reference's edges are its own smallest and largest values, so it leaves both open bins
    empty by construction, and under no drift a current value lands there with probability
    about ``1 / n_ref``. A bin that expects a tenth of a count makes chi-square-type tests
    anti-conservative (one value there adds about 10 to the statistic) and PSI's epsilon
    makes it worse; merged, the open bins only extend the outermost quantile bins.
    ``mask`` (from :func:`~edgedl.collector.drift.stack`) marks each row's real bins.
    """
    c = np.array(counts, dtype=np.float64, ndmin=1)
    width = c.shape[-1]
    if width < 4:
        return c
    last = (mask.sum(axis=-1) - 1) if mask is not None else np.full(c.shape[:-1], width - 1)
    last = np.broadcast_to(np.asarray(last, dtype=np.int64), c.shape[:-1])
    out = c.copy()
    out[..., 1] += out[..., 0]
    out[..., 0] = 0.0
    top = np.take_along_axis(out, last[..., None], axis=-1)
    np.put_along_axis(
        out,
        last[..., None] - 1,
        np.take_along_axis(out, last[..., None] - 1, axis=-1) + top,
        axis=-1,
    )
    np.put_along_axis(out, last[..., None], 0.0, axis=-1)
    return out


def noise_scale(n_ref: ArrayLike, n_cur: ArrayLike) -> FloatArray:
    """``1/n_ref + 1/n_cur``: how much two samples' shares differ by chance (inf when empty)."""
    r = np.asarray(n_ref, dtype=np.float64)
    c = np.asarray(n_cur, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.asarray(1.0 / r + 1.0 / c, dtype=np.float64)


def degrees_of_freedom(reference: ArrayLike, current: ArrayLike) -> NDArray[np.int64]:
    """Bins that hold anything in either sample, minus one (at least 1)."""
    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    used = np.sum((r + c) > 0, axis=-1)
    return np.asarray(np.maximum(used - 1, 1), dtype=np.int64)


def chi2_sf_rows(x: ArrayLike, dof: ArrayLike) -> FloatArray:
    """:func:`~edgedl.collector.drift.chi2_sf` element-wise (0 at +inf, NaN at NaN).

    Vectorised with the closed forms of the chi-square survival function for whole and half
    whole ``dof / 2`` (a finite sum, plus ``erfc`` for odd ``dof``); ``dof`` above
    :data:`CLOSED_FORM_DOF` uses the scalar series.
    """
    xs = np.asarray(x, dtype=np.float64)
    ds = np.broadcast_to(np.asarray(dof, dtype=np.int64), xs.shape)
    half = np.where(np.isfinite(xs), np.maximum(xs, 0.0), 0.0) / 2.0
    out = np.zeros(xs.shape)
    odd = ds % 2 == 1
    # Odd dof: Q = erfc(sqrt(x/2)) + e^(-x/2) Σ_{i=1}^{(dof-1)/2} (x/2)^(i-1/2) / Γ(i+1/2)
    # Even dof: Q = e^(-x/2) Σ_{i=0}^{dof/2-1} (x/2)^i / i!
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    out = np.where(odd, erfc(np.sqrt(half)), 0.0)
    term = np.where(odd, np.sqrt(half) * math.exp(-math.lgamma(1.5)), 1.0) * np.exp(-half)
    steps = np.where(odd, (ds - 1) // 2, ds // 2)
    for i in range(int(min(steps.max(initial=0), CLOSED_FORM_DOF))):
        out = out + np.where(i < steps, term, 0.0)
        base = np.where(odd, i + 1.5, i + 1.0)
        term = term * half / base
    out = np.clip(out, 0.0, 1.0)
    large = ds > 2 * CLOSED_FORM_DOF
    if np.any(large):
        scalar = np.vectorize(chi2_sf, otypes=[np.float64])
        out = np.where(large, scalar(np.where(large, half * 2.0, 0.0), np.where(large, ds, 1)), out)
    out = np.where(xs <= 0, 1.0, out)
    return np.asarray(np.where(np.isnan(xs), np.nan, np.where(np.isposinf(xs), 0.0, out)))


def psi_p_value(psi: ArrayLike, n_ref: ArrayLike, n_cur: ArrayLike, dof: ArrayLike) -> FloatArray:
    """P-value of a PSI under no drift: ``PSI / (1/n_ref + 1/n_cur)`` against ``χ²(dof)``."""
    return chi2_sf_rows(np.asarray(psi, dtype=np.float64) / noise_scale(n_ref, n_cur), dof)


def js_p_value(js: ArrayLike, n_ref: ArrayLike, n_cur: ArrayLike, dof: ArrayLike) -> FloatArray:
    """P-value of a JS distance: ``8 ln 2 · JS² / (1/n_ref + 1/n_cur)`` against ``χ²(dof)``."""
    d = np.asarray(js, dtype=np.float64)
    return chi2_sf_rows(8.0 * math.log(2.0) * d * d / noise_scale(n_ref, n_cur), dof)


class BridgeNull:
    """Null distributions of binned KS and normed Wasserstein, drawn for a set of references.

    ``reference`` is ``(S, B)`` counts, ``positions`` the bin positions
    (:func:`~edgedl.collector.drift.bin_positions`, padded rows any increasing values) and
    ``std`` the reference stds, as :func:`~edgedl.collector.drift.compare` takes them. Each
    row's bridges are drawn with the same seed, so a reference always gets the same null.
    """

    def __init__(
        self,
        reference: ArrayLike,
        positions: ArrayLike,
        std: ArrayLike,
        draws: int = NULL_DRAWS,
        seed: int = NULL_SEED,
    ) -> None:
        r = shares(np.asarray(reference, dtype=np.float64))
        if r.ndim == 1:
            r = r[None, :]
        pos = np.asarray(positions, dtype=np.float64).reshape(r.shape)
        std_arr = np.maximum(
            np.broadcast_to(np.asarray(std, dtype=np.float64), r.shape[:1]), MIN_STD
        )
        weights = np.diff(pos, axis=-1) / std_arr[:, None]
        rows = r.shape[0]
        self.ks_quantiles = np.zeros((rows, _P_GRID.size))
        self.wasserstein_quantiles = np.zeros((rows, _P_GRID.size))
        # One bin per row, one draw per column: the cumulative sums run over contiguous rows.
        normal = np.random.default_rng(seed).standard_normal((r.shape[1], draws))
        for i in range(rows):
            # Brownian motion at the cumulative shares, then pinned to zero at 1: a bridge.
            walk = np.cumsum(normal * np.sqrt(r[i])[:, None], axis=0)
            bridge = np.abs(walk[:-1] - np.cumsum(r[i])[:-1, None] * walk[-1])
            ks = bridge.max(axis=0) if bridge.shape[0] else np.zeros(draws)
            ws = weights[i] @ bridge
            self.ks_quantiles[i] = _upper_quantiles(ks)
            self.wasserstein_quantiles[i] = _upper_quantiles(ws)

    def ks_p_value(self, ks: ArrayLike, n_ref: ArrayLike, n_cur: ArrayLike) -> FloatArray:
        """P-value of each row's binned KS at these sample sizes."""
        return _lookup(self.ks_quantiles, ks, n_ref, n_cur)

    def wasserstein_p_value(
        self, wasserstein: ArrayLike, n_ref: ArrayLike, n_cur: ArrayLike
    ) -> FloatArray:
        """P-value of each row's normed Wasserstein at these sample sizes."""
        return _lookup(self.wasserstein_quantiles, wasserstein, n_ref, n_cur)


def _upper_quantiles(draws: FloatArray) -> FloatArray:
    """The values exceeded with probability ``_P_GRID`` (``np.quantile``'s linear rule)."""
    ordered = np.sort(draws)
    at = (1.0 - _P_GRID) * (ordered.size - 1)
    lo = np.floor(at).astype(np.int64)
    hi = np.minimum(lo + 1, ordered.size - 1)
    return np.asarray(ordered[lo] + (at - lo) * (ordered[hi] - ordered[lo]), dtype=np.float64)


def _lookup(
    quantiles: FloatArray, value: ArrayLike, n_ref: ArrayLike, n_cur: ArrayLike
) -> FloatArray:
    """Interpolate p-values from each row's quantiles (``quantiles[:, j]`` has ``_P_GRID[j]``).

    At or below the smallest kept value (and for a constant null of zeros): 1. Beyond the
    largest: below the grid's end, reported as half of it.
    """
    scaled = np.asarray(value, dtype=np.float64) / np.sqrt(noise_scale(n_ref, n_cur))
    v = np.broadcast_to(scaled, quantiles.shape[:1])
    # Quantiles fall as p rises: count the kept values above v to find its place.
    above = np.sum(quantiles > v[:, None], axis=1)
    j = np.clip(above, 1, _P_GRID.size - 1)
    rows = np.arange(quantiles.shape[0])
    q_hi, q_lo = quantiles[rows, j - 1], quantiles[rows, j]  # q_hi >= v > q_lo
    log_p = np.log(_P_GRID)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(q_hi > q_lo, (q_hi - v) / (q_hi - q_lo), 0.0)
    p = np.exp(log_p[j - 1] + np.clip(frac, 0.0, 1.0) * (log_p[j] - log_p[j - 1]))
    p = np.where(v <= quantiles[:, -1], 1.0, p)
    p = np.where(v > quantiles[:, 0], _P_GRID[0] / 2, p)
    return np.asarray(np.where(np.isnan(v), np.nan, p), dtype=np.float64)


__all__ = [
    "NULL_DRAWS",
    "BridgeNull",
    "chi2_sf_rows",
    "degrees_of_freedom",
    "js_p_value",
    "merge_open_bins",
    "noise_scale",
    "psi_p_value",
]
