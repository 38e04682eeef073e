"""Histograms and profiles: binning, exact moments, merging, serialization."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgedl.errors import DataError
from edgedl.profile import MAX_FEATURES, Histogram, Profile, batch_statistics

N = 200
STATS = ("mean", "std", "min", "max", "nonfinite", "length")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _batch(seed: int, n: int = N) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Image-like inputs and softmax outputs of ``n`` samples."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, 8, 8, 1)).astype(np.float32)
    probs = _softmax(rng.normal(0.0, 2.0, (n, 10))).astype(np.float32)
    return {"image": images}, {"probs": probs}


def _assert_same_hist(a: Histogram, b: Histogram) -> None:
    np.testing.assert_array_equal(a.edges, b.edges)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.count == b.count
    assert a.missing == b.missing
    assert a.total == pytest.approx(b.total, rel=1e-12, abs=1e-12)
    assert a.total_sq == pytest.approx(b.total_sq, rel=1e-12, abs=1e-12)


def _assert_same_profile(a: Profile, b: Profile) -> None:
    assert a.samples == b.samples
    assert set(a.histograms) == set(b.histograms)
    for key in a.histograms:
        _assert_same_hist(a.histograms[key], b.histograms[key])
    assert set(a.class_counts) == set(b.class_counts)
    for key in a.class_counts:
        np.testing.assert_array_equal(a.class_counts[key], b.class_counts[key])


# --- Histogram --------------------------------------------------------------------------


def test_binning_edges_overflow_and_missing():
    hist = Histogram.empty([0.0, 1.0, 2.0, 3.0])
    assert hist.counts.tolist() == [0, 0, 0, 0, 0]
    hist.add(np.array([-5.0, 0.0, 0.5, 1.0, 1.999, 2.0, 2.999, 3.0, 3.1, 1e9]))
    # below | [0, 1) | [1, 2) | [2, 3] | above
    assert hist.counts.tolist() == [1, 2, 2, 3, 2]
    assert hist.count == 10
    assert hist.missing == 0


def test_value_equal_to_last_edge_is_in_last_inner_bin():
    hist = Histogram.empty([0.0, 1.0])
    hist.add(np.array([1.0, 1.0, np.nextafter(1.0, 2.0)]))
    assert hist.counts.tolist() == [0, 2, 1]


def test_value_equal_to_inner_edge_starts_the_next_bin():
    hist = Histogram.empty([0.0, 1.0, 2.0])
    hist.add(np.array([np.nextafter(1.0, 0.0), 1.0]))
    assert hist.counts.tolist() == [0, 1, 1, 0]


def test_nonfinite_values_are_missing_only():
    hist = Histogram.empty([0.0, 1.0, 2.0])
    hist.add(np.array([np.nan, np.inf, -np.inf, 0.5, np.nan]))
    assert hist.counts.tolist() == [0, 1, 0, 0]
    assert hist.missing == 4
    assert hist.count == 1
    assert hist.total == 0.5
    assert hist.total_sq == 0.25


def test_all_nonfinite_values_leave_moments_empty():
    hist = Histogram.empty([0.0, 1.0])
    hist.add(np.array([np.nan, np.inf]))
    assert hist.counts.sum() == 0
    assert hist.missing == 2
    assert hist.count == 0
    assert np.isnan(hist.mean)
    assert np.isnan(hist.std)


def test_add_accumulates_any_shape():
    hist = Histogram.empty([0.0, 10.0])
    hist.add(np.full((2, 3), 5.0))
    hist.add(np.array([[20.0], [-1.0]]))
    assert hist.counts.tolist() == [1, 6, 1]
    assert hist.count == 8


def test_moments_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.5, 1000)
    values[::97] = np.nan
    values[5] = np.inf
    finite = values[np.isfinite(values)]
    hist = Histogram.from_reference(values, bins=7)
    assert hist.count == finite.size
    assert hist.missing == values.size - finite.size
    assert hist.total == pytest.approx(finite.sum(), rel=1e-12)
    assert hist.total_sq == pytest.approx(np.square(finite).sum(), rel=1e-12)
    assert hist.mean == pytest.approx(np.mean(finite), rel=1e-12)
    assert hist.std == pytest.approx(np.std(finite), rel=1e-9)  # population std (ddof=0)


def test_from_reference_uses_quantile_edges():
    values = np.random.default_rng(1).uniform(-1.0, 1.0, 1000)
    hist = Histogram.from_reference(values, bins=10)
    assert hist.edges.size == 11
    assert np.all(np.diff(hist.edges) > 0)
    assert hist.edges[0] == values.min()
    assert hist.edges[-1] == values.max()
    assert hist.counts.size == 12
    assert hist.counts[0] == 0
    assert hist.counts[-1] == 0
    assert hist.counts.sum() == 1000
    # Quantile edges give (almost) equal bins.
    assert np.all(np.abs(hist.counts[1:-1] - 100) <= 1)


def test_from_reference_deduplicates_edges():
    values = np.array([0.0] * 50 + [1.0] * 50)
    hist = Histogram.from_reference(values, bins=10)
    assert np.all(np.diff(hist.edges) > 0)
    assert hist.counts.sum() == 100
    assert hist.counts[0] == 0
    assert hist.counts[-1] == 0


@pytest.mark.parametrize("value", [3.5, 0.0, -1e6])
def test_constant_reference_gets_a_narrow_bin(value):
    hist = Histogram.from_reference(np.full(50, value), bins=10)
    assert hist.edges.size == 2
    assert hist.edges[0] < value < hist.edges[1]
    assert hist.counts.tolist() == [0, 50, 0]
    assert hist.mean == pytest.approx(value)
    assert hist.std == pytest.approx(0.0, abs=1e-6 * max(1.0, abs(value)))
    live = hist.empty_like()
    delta = max(1.0, abs(value))
    live.add(np.array([value, value + delta, value - delta]))
    assert live.counts.tolist() == [1, 1, 1]


def test_reference_without_finite_values():
    hist = Histogram.from_reference(np.array([np.nan, np.inf]))
    assert hist.edges.tolist() == [-1.0, 1.0]
    assert hist.missing == 2
    assert hist.counts.sum() == 0


def test_empty_like_keeps_edges_and_counts_nothing():
    hist = Histogram.from_reference(np.arange(100.0), bins=4)
    empty = hist.empty_like()
    np.testing.assert_array_equal(empty.edges, hist.edges)
    assert empty.counts.tolist() == [0] * hist.counts.size
    assert (empty.count, empty.total, empty.total_sq, empty.missing) == (0, 0.0, 0.0, 0)
    empty.add(np.array([1.0]))
    assert hist.counts.sum() == 100  # the reference is not touched


def test_merge_equals_histogram_of_concatenation():
    rng = np.random.default_rng(2)
    ref = Histogram.from_reference(rng.normal(size=500), bins=8)
    a_vals = rng.normal(0.5, 1.5, 300)
    b_vals = rng.normal(-0.5, 0.5, 200)
    a_vals[3] = np.nan
    b_vals[[1, 2]] = np.inf
    a, b, both = ref.empty_like(), ref.empty_like(), ref.empty_like()
    a.add(a_vals)
    b.add(b_vals)
    both.add(np.concatenate([a_vals, b_vals]))
    a_counts = a.counts.copy()
    merged = a.merge(b)
    _assert_same_hist(merged, both)
    assert merged.mean == pytest.approx(both.mean, rel=1e-12)
    assert merged.std == pytest.approx(both.std, rel=1e-9)
    np.testing.assert_array_equal(a.counts, a_counts)  # merge does not change its operands
    assert a.count == 299


def test_merge_with_different_edges_raises():
    a = Histogram.empty([0.0, 1.0, 2.0])
    b = Histogram.empty([0.0, 1.0, 3.0])
    with pytest.raises(DataError, match="different bin edges"):
        a.merge(b)
    with pytest.raises(DataError, match="different bin edges"):
        a.merge(Histogram.empty([0.0, 2.0]))


def test_to_dict_from_dict_round_trip_exactly():
    rng = np.random.default_rng(3)
    values = rng.normal(1.0 / 3.0, np.pi, 777)
    values[10] = np.nan
    hist = Histogram.from_reference(values, bins=9)
    data = json.loads(json.dumps(hist.to_dict()))
    assert set(data) == {"edges", "counts", "count", "sum", "sum_sq", "missing"}
    back = Histogram.from_dict(data)
    np.testing.assert_array_equal(back.edges, hist.edges)
    np.testing.assert_array_equal(back.counts, hist.counts)
    assert back.counts.dtype == np.int64
    assert back.count == hist.count == 776
    assert back.total == hist.total
    assert back.total_sq == hist.total_sq
    assert back.missing == hist.missing == 1
    assert back.to_dict() == hist.to_dict()


def test_from_dict_defaults_for_optional_keys():
    hist = Histogram.from_dict({"edges": [0.0, 1.0], "counts": [1, 2, 3]})
    assert hist.count == 6
    assert (hist.total, hist.total_sq, hist.missing) == (0.0, 0.0, 0)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"edges": [0.0, 1.0, 2.0], "counts": [1, 2]}, "counts do not fit"),
        ({"edges": [0.0, 1.0, 2.0], "counts": [0, 1, 2, 3, 4]}, "counts do not fit"),
        ({"edges": [0.0], "counts": [0, 0]}, "counts do not fit"),
        ({"edges": [[0.0, 1.0]], "counts": [0, 0, 0]}, "counts do not fit"),
        ({"edges": [0.0, 2.0, 1.0], "counts": [0, 0, 0, 0]}, "increasing"),
        ({"edges": [0.0, 1.0, 1.0], "counts": [0, 0, 0, 0]}, "increasing"),
        ({"edges": [0.0, float("inf")], "counts": [0, 0, 0]}, "finite"),
        ({"edges": [0.0, 1.0], "counts": [0, -1, 0]}, "negative"),
        ({"counts": [0, 0, 0]}, "edges"),
        ({"edges": [0.0, 1.0]}, "counts"),
        ({"edges": ["a", "b"], "counts": [0, 0, 0]}, "malformed"),
        ({"edges": [0.0, 1.0], "counts": [0, 0, 0], "count": "many"}, "malformed"),
    ],
)
def test_from_dict_rejects_malformed(data: dict[str, Any], why: str):
    with pytest.raises(DataError, match="malformed histogram") as info:
        Histogram.from_dict(data)
    assert why in str(info.value)


# --- Profile ----------------------------------------------------------------------------


def test_profile_keys_for_images_and_softmax():
    inputs, outputs = _batch(0)
    profile = Profile.from_reference(inputs, outputs)
    expected = {f"input/image/{s}" for s in STATS} | {"output/probs/top1_confidence"}
    assert set(profile.histograms) == expected  # no feature[i] for a 4-D input
    assert profile.samples == N
    assert set(profile.class_counts) == {"output/probs"}
    counts = profile.class_counts["output/probs"]
    assert counts.shape == (10,)
    assert counts.sum() == N
    np.testing.assert_array_equal(
        counts, np.bincount(outputs["probs"].argmax(axis=1), minlength=10)
    )
    for hist in profile.histograms.values():
        assert hist.count == N
        assert hist.counts.sum() == N


def test_profile_statistics_values():
    inputs, outputs = _batch(1)
    flat = inputs["image"].reshape(N, -1).astype(np.float64)
    profile = Profile.from_reference(inputs, outputs)
    h = profile.histograms
    assert h["input/image/mean"].mean == pytest.approx(flat.mean(axis=1).mean(), rel=1e-9)
    assert h["input/image/std"].mean == pytest.approx(flat.std(axis=1).mean(), rel=1e-9)
    assert h["input/image/min"].total == pytest.approx(flat.min(axis=1).sum(), rel=1e-9)
    assert h["input/image/max"].total == pytest.approx(flat.max(axis=1).sum(), rel=1e-9)
    assert h["input/image/length"].mean == 64.0
    assert h["input/image/nonfinite"].total == 0.0
    top1 = outputs["probs"].astype(np.float64).max(axis=1)
    assert h["output/probs/top1_confidence"].total == pytest.approx(top1.sum(), rel=1e-9)


def test_nonfinite_input_elements():
    inputs, outputs = _batch(2, n=10)
    image = inputs["image"].astype(np.float64)
    image[4, 0, 0, 0] = np.nan
    image[4, 0, 1, 0] = np.inf
    image[9] = np.nan  # a sample with no finite element at all
    stats, _ = batch_statistics({"image": image}, outputs)
    nonfinite = stats["input/image/nonfinite"]
    assert nonfinite[4] == pytest.approx(2 / 64)
    assert nonfinite[9] == 1.0
    assert nonfinite[0] == 0.0
    finite4 = image[4].ravel()[np.isfinite(image[4].ravel())]
    assert stats["input/image/mean"][4] == pytest.approx(finite4.mean())
    assert stats["input/image/max"][4] == pytest.approx(finite4.max())
    assert np.isnan(stats["input/image/mean"][9])
    profile = Profile.from_reference({"image": image}, outputs)
    assert profile.histograms["input/image/mean"].missing == 1
    assert profile.histograms["input/image/mean"].count == 9


@pytest.mark.parametrize("width", [1, 5, MAX_FEATURES])
def test_tabular_inputs_get_per_feature_histograms(width):
    rng = np.random.default_rng(width)
    table = rng.normal(np.arange(width), 1.0, (N, width))
    profile = Profile.from_reference({"row": table}, {})
    features = sorted(k for k in profile.histograms if "feature[" in k)
    assert features == sorted(f"input/row/feature[{i}]" for i in range(width))
    for i in range(width):
        hist = profile.histograms[f"input/row/feature[{i}]"]
        assert hist.mean == pytest.approx(table[:, i].mean(), rel=1e-9, abs=1e-12)
    assert profile.class_counts == {}


def test_wide_tabular_inputs_get_no_feature_histograms():
    table = np.random.default_rng(4).normal(size=(N, MAX_FEATURES + 1))
    profile = Profile.from_reference({"row": table}, {})
    assert not [k for k in profile.histograms if "feature[" in k]
    assert set(profile.histograms) == {f"input/row/{s}" for s in STATS}


def test_observe_on_empty_like_reproduces_reference():
    inputs, outputs = _batch(5)
    ref = Profile.from_reference(inputs, outputs)
    live = ref.empty_like()
    assert live.samples == 0
    assert all(h.counts.sum() == 0 for h in live.histograms.values())
    assert all(c.sum() == 0 for c in live.class_counts.values())
    live.observe(inputs, outputs)
    _assert_same_profile(live, ref)


def test_observe_ignores_unknown_statistics():
    inputs, outputs = _batch(6, n=20)
    ref = Profile.from_reference(inputs, outputs)
    live = ref.empty_like()
    live.observe({**inputs, "other": np.zeros((20, 3))}, {**outputs, "extra": np.zeros((20, 4))})
    assert set(live.histograms) == set(ref.histograms)
    assert set(live.class_counts) == set(ref.class_counts)
    assert live.samples == 20


def test_merge_of_two_windows_equals_one_window_that_saw_both():
    ref = Profile.from_reference(*_batch(7))
    b1, b2, b3 = _batch(8, n=50), _batch(9, n=70), _batch(10, n=30)
    w1, w2, both = ref.empty_like(), ref.empty_like(), ref.empty_like()
    w1.observe(*b1)
    w1.observe(*b2)
    w2.observe(*b3)
    for batch in (b1, b2, b3):
        both.observe(*batch)
    merged = w1.merge(w2)
    assert merged.samples == 150
    assert merged.class_counts["output/probs"].sum() == 150
    _assert_same_profile(merged, both)
    # and the same as observing everything as a single batch
    single = ref.empty_like()
    single.observe(
        {"image": np.concatenate([b[0]["image"] for b in (b1, b2, b3)])},
        {"probs": np.concatenate([b[1]["probs"] for b in (b1, b2, b3)])},
    )
    _assert_same_profile(merged, single)


def test_merge_keeps_statistics_present_in_one_profile_only():
    a = Profile.from_reference({"x": np.random.default_rng(0).random((10, 4))}, {})
    b = Profile.from_reference({"z": np.random.default_rng(1).random((5, 4))}, {})
    merged = a.merge(b)
    assert set(merged.histograms) == set(a.histograms) | set(b.histograms)
    assert merged.samples == 15
    assert merged.histograms["input/x/mean"].count == 10
    assert merged.histograms["input/z/mean"].count == 5


def test_merge_rejects_different_edges_and_class_numbers():
    a = Profile.from_reference(*_batch(11))
    b = Profile.from_reference(*_batch(12))
    with pytest.raises(DataError, match="edges"):
        a.merge(b)
    c = Profile(class_counts={"output/probs": np.zeros(3, dtype=np.int64)})
    with pytest.raises(DataError, match="output/probs"):
        a.merge(c)


def test_observe_on_merged_profile_does_not_mutate_operands():
    inputs, outputs = _batch(13, n=20)
    window = Profile.from_reference(inputs, outputs)
    before = Profile.from_dict(window.to_dict())
    total = Profile().merge(window)
    total.observe(inputs, outputs)
    _assert_same_profile(window, before)


def test_logits_get_softmax_for_top1_confidence():
    rng = np.random.default_rng(14)
    logits = rng.normal(0.0, 5.0, (N, 10))
    assert logits.max() > 1.0 and logits.min() < 0.0  # not a probability distribution
    stats, classes = batch_statistics({"x": np.zeros((N, 2))}, {"logits": logits})
    top1 = stats["output/logits/top1_confidence"]
    assert np.all(top1 > 0.0)
    assert np.all(top1 <= 1.0)
    assert np.all(top1 >= 0.1)  # the top of 10 probabilities
    np.testing.assert_allclose(top1, _softmax(logits).max(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(classes["output/logits"], logits.argmax(axis=1))
    hist = Profile.from_reference({"x": np.zeros((N, 2))}, {"logits": logits}).histograms[
        "output/logits/top1_confidence"
    ]
    assert hist.edges[0] > 0.0
    assert hist.edges[-1] <= 1.0
    assert hist.mean == pytest.approx(_softmax(logits).max(axis=1).mean(), rel=1e-9)


@pytest.mark.parametrize("shape", [(N,), (N, 1), (N, 4, 4)])
def test_non_classification_outputs_get_mean(shape):
    rng = np.random.default_rng(15)
    y = rng.normal(2.0, 1.0, shape)
    profile = Profile.from_reference({"x": np.zeros((N, 2))}, {"score": y})
    assert "output/score/mean" in profile.histograms
    assert "output/score/top1_confidence" not in profile.histograms
    assert profile.class_counts == {}
    per_sample = y.reshape(N, -1).mean(axis=1)
    assert profile.histograms["output/score/mean"].mean == pytest.approx(per_sample.mean())


def test_profile_dict_round_trip():
    inputs, outputs = _batch(16)
    profile = Profile.from_reference(inputs, outputs)
    data = json.loads(json.dumps(profile.to_dict()))
    back = Profile.from_dict(data)
    _assert_same_profile(back, profile)
    assert back.to_dict() == profile.to_dict()


def test_profile_from_dict_rejects_unknown_schema_and_bad_histograms():
    with pytest.raises(DataError, match="schema_version"):
        Profile.from_dict({"schema_version": 99})
    with pytest.raises(DataError, match="malformed"):
        Profile.from_dict({"histograms": {"k": {"edges": [1.0, 0.0], "counts": [0, 0, 0]}}})
    with pytest.raises(DataError, match="malformed"):
        Profile.from_dict({"histograms": []})


def test_int8_probabilities_that_miss_one_by_their_rounding_are_not_softmaxed_again():
    """A full-integer model's softmax dequantizes to multiples of 1/256: ten rounded scores
    can sum to 0.98. They are probabilities: their top-1 is the largest score, not the
    largest score of a softmax over them (about 0.23 for a sure answer)."""
    from edgedl.profile import top1_confidence

    sure = np.array([[249, 0, 0, 0, 0, 0, 0, 0, 0, 2]]) / 256  # sums to 0.9805
    unsure = np.array([[100, 90, 10, 10, 10, 10, 10, 10, 0, 0]]) / 256  # sums to 0.977
    batch = np.concatenate([sure, np.tile(unsure, (3, 1))])
    assert top1_confidence({"probs": sure})[0] == pytest.approx(249 / 256)
    assert top1_confidence({"probs": batch}) == pytest.approx([249 / 256] + [100 / 256] * 3)
    # Logits stay logits: a softmax is taken.
    logits = np.array([[4.0, 1.0, 0.5, 0, 0, 0, 0, 0, 0, 0]])
    e = np.exp(logits - logits.max())
    assert top1_confidence({"logits": logits})[0] == pytest.approx((e / e.sum()).max())
