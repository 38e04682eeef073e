"""Drift numbers against hand-computed values and SciPy on the same bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2, chi2_contingency, ks_2samp, wasserstein_distance
from tests.collector.helpers import WindowMaker

from edgedl.bundle import Manifest
from edgedl.collector import drift
from edgedl.collector.config import DriftConfig
from edgedl.collector.evaluation import evaluate
from edgedl.collector.references import ReferenceModel
from edgedl.collector.sliding import Contribution, SlidingWindow
from edgedl.profile import Histogram

R = [10, 20, 30, 40]
C = [40, 30, 20, 10]


def test_psi_by_hand() -> None:
    # Σ (c − r) ln(c / r) on shares .1 .2 .3 .4 against .4 .3 .2 .1
    expected = 2 * 0.3 * math.log(4.0) + 2 * 0.1 * math.log(1.5)
    assert drift.psi(R, C) == pytest.approx(expected, rel=1e-12)
    assert drift.psi(R, C) == pytest.approx(0.9128696, abs=1e-7)
    assert drift.psi(R, R) == 0.0
    # PSI is symmetric in r and c.
    assert drift.psi(C, R) == pytest.approx(expected)


def test_psi_replaces_empty_bins_with_evidentlys_epsilon() -> None:
    # shares [0, .5, .5] vs [.5, .5, 0]: the zero shares become 1e-4.
    expected = 2 * (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert drift.psi([0, 50, 50], [50, 50, 0]) == pytest.approx(expected, rel=1e-12)
    # When the smallest non-zero share is itself tiny, eps is that share / 1e6.
    filled = drift.fill_empty(np.array([0.0, 5e-5, 1 - 5e-5]))
    assert filled[0] == pytest.approx(5e-11)


def test_ks_is_the_largest_gap_between_binned_cdfs() -> None:
    # CDFs .1 .3 .6 1 and .4 .7 .9 1
    assert drift.ks_binned(R, C) == pytest.approx(0.4)


def test_binned_ks_is_a_lower_bound_of_the_sample_ks() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.normal(0, 1, 3000), rng.normal(0.3, 1.2, 3000)
    hist = Histogram.from_reference(ref, bins=10)
    live = hist.empty_like()
    live.add(cur)
    binned = float(drift.ks_binned(hist.counts, live.counts))
    sample = float(ks_2samp(ref, cur).statistic)
    assert 0 < binned <= sample + 1e-12


def test_wasserstein_by_hand_and_positions_of_the_open_bins() -> None:
    # edges 0, 1, 2: positions -0.5 (below), 0.5, 1.5, 2.5 (above)
    pos = drift.bin_positions([0.0, 1.0, 2.0])
    assert list(pos) == [-0.5, 0.5, 1.5, 2.5]
    # all mass moves from 0.5 to 1.5: distance 1, normed by a reference std of 0.5 -> 2
    assert drift.wasserstein_binned([0, 5, 0, 0], [0, 0, 5, 0], pos, 0.5) == pytest.approx(2.0)
    # a tiny reference std is floored at 1e-3, as Evidently does
    assert drift.wasserstein_binned([0, 5, 0, 0], [0, 0, 5, 0], pos, 0.0) == pytest.approx(1000.0)


def test_js_distance_extremes() -> None:
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert drift.js_distance(R, R) == pytest.approx(0.0)


def test_chi_square_by_hand() -> None:
    # Both rows are samples: pooled shares .4 .6, expected 40 60 in each row.
    stat, p = drift.chi_square([50, 50], [30, 70])
    assert stat == pytest.approx(2 * (10**2 / 40 + 10**2 / 60))
    assert p == pytest.approx(chi2.sf(25 / 3, 1), rel=1e-10)
    # Classes neither sample saw count no degree of freedom.
    assert drift.chi_square([50, 50, 0], [30, 70, 0]) == pytest.approx((stat, p))


@pytest.mark.parametrize("seed", range(5))
def test_every_statistic_matches_scipy_on_the_same_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref_values = rng.gamma(2.0, 1.0, 5000)
    cur_values = rng.gamma(2.0 + seed * 0.2, 1.0 + seed * 0.1, 800)
    ref = Histogram.from_reference(ref_values, bins=12)
    cur = ref.empty_like()
    cur.add(cur_values)
    r, c = ref.counts.astype(float), cur.counts.astype(float)
    pos = drift.bin_positions(ref.edges)

    assert drift.js_distance(r, c) == pytest.approx(jensenshannon(r, c, base=2), abs=1e-12)
    assert drift.wasserstein_binned(r, c, pos, ref.std) == pytest.approx(
        wasserstein_distance(pos, pos, r, c) / ref.std, rel=1e-9
    )
    rs, cs = drift.fill_empty(r / r.sum()), drift.fill_empty(c / c.sum())
    assert drift.psi(r, c) == pytest.approx(float(np.sum((cs - rs) * np.log(cs / rs))), rel=1e-12)

    classes_ref = rng.multinomial(5000, np.full(10, 0.1))
    classes_cur = rng.multinomial(800, rng.dirichlet(np.ones(10) * 20))
    stat, p = drift.chi_square(classes_ref, classes_cur)
    sp = chi2_contingency(np.array([classes_ref, classes_cur]), correction=False)
    assert stat == pytest.approx(sp.statistic, rel=1e-10)
    assert p == pytest.approx(sp.pvalue, rel=1e-6, abs=1e-300)


@pytest.mark.parametrize(("x", "dof"), [(0.5, 1), (3.2, 5), (40.0, 9), (1500.0, 1200), (90.0, 3)])
def test_chi_square_survival_function_matches_scipy(x: float, dof: int) -> None:
    assert drift.chi2_sf(x, dof) == pytest.approx(chi2.sf(x, dof), rel=1e-8, abs=1e-300)


def test_stacked_rows_give_the_same_numbers_as_single_rows() -> None:
    rows = [[5, 0, 3, 2], [1, 1, 1, 1, 1, 1], [0, 9, 1]]
    other = [[1, 4, 3, 2], [3, 0, 1, 1, 0, 1], [2, 2, 6]]
    width = 6
    r, c = drift.pad_counts(rows, width), drift.pad_counts(other, width)
    _, mask = drift.stack([np.zeros(len(x)) for x in rows])
    assert np.allclose(
        drift.psi(r, c, mask), [float(drift.psi(a, b)) for a, b in zip(rows, other, strict=True)]
    )
    assert np.allclose(
        drift.js_distance(r, c),
        [float(drift.js_distance(a, b)) for a, b in zip(rows, other, strict=True)],
    )
    assert np.allclose(
        drift.ks_binned(r, c),
        [float(drift.ks_binned(a, b)) for a, b in zip(rows, other, strict=True)],
    )


def test_percentile_of_a_latency_histogram() -> None:
    edges = [1.0, 2.0, 4.0]
    # 10 below 1 ms, 10 in [1, 2), 0 in [2, 4], 0 above
    assert drift.percentile([10, 10, 0, 0], edges, 0.5) == pytest.approx(1.0)
    assert drift.percentile([10, 10, 0, 0], edges, 0.75) == pytest.approx(1.5)
    assert drift.percentile([0, 0, 0, 4], edges, 0.95) == 4.0  # open bin: a lower bound


def _total(
    maker: WindowMaker, reference: ReferenceModel, n_windows: int, n: int, shift: float
) -> Contribution:
    window = SlidingWindow(100, reference)
    for seq in range(n_windows):
        model = maker.window("d", seq, n=n, shift=shift).models[0]
        contribution, mismatched = Contribution.from_window(seq, model, reference)
        assert mismatched == 0
        window.add(contribution)
    return window.total


def test_evaluation_of_real_windows_matches_scipy(reference_manifest: Manifest) -> None:
    maker = WindowMaker(reference_manifest, "f")
    reference = ReferenceModel.from_manifest(reference_manifest)
    total = _total(maker, reference, 6, 50, shift=0.3)
    result = evaluate(total, reference, None, DriftConfig(min_samples=200))
    by_stat = {s["statistic"]: s for s in result["statistics"]}
    profile = reference_manifest.reference_profile()
    assert profile is not None
    for stat, ref_hist in profile.histograms.items():
        row = reference.stats.index(stat)
        cur = total.counts[row, : ref_hist.counts.size]
        r = ref_hist.counts.astype(float)
        pos = drift.bin_positions(ref_hist.edges)
        figures = by_stat[stat]
        assert figures["samples"] == 300 and figures["judged"]
        assert figures["js"] == pytest.approx(jensenshannon(r, cur, base=2), abs=1e-9)
        assert figures["wasserstein"] == pytest.approx(
            wasserstein_distance(pos, pos, r, cur) / max(ref_hist.std, 1e-3), rel=1e-9, abs=1e-12
        )
    mean = by_stat["input/image/mean"]
    assert mean["psi"] > 0.2 and mean["status"] == "alert"
    assert result["classes"][0]["samples"] == 300


def test_small_samples_are_reported_but_not_judged(reference_manifest: Manifest) -> None:
    maker = WindowMaker(reference_manifest, "f")
    reference = ReferenceModel.from_manifest(reference_manifest)
    total = _total(maker, reference, 2, 20, shift=0.5)  # 40 samples, strongly shifted
    result = evaluate(total, reference, None, DriftConfig(min_samples=200))
    mean = next(s for s in result["statistics"] if s["statistic"] == "input/image/mean")
    assert mean["psi"] > 0.2
    assert mean["judged"] is False and mean["status"] == "too few samples"
