"""The drop ``--target auto`` and its mixed-precision search judge a candidate by, in points:
accuracy with labels, top-1 disagreement without, and 100 x (1 - mean cosine) for embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from edgedl.converters.validate import drop_measure, drop_pts, judge
from edgedl.errors import UsageError


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_an_embedding_drops_by_its_mean_cosine_and_the_worst_is_reported_beside_it() -> None:
    rng = np.random.default_rng(0)
    ref = _unit(rng.normal(size=(50, 384)))
    art = ref.copy()
    art[0] = _unit(ref[:1] + rng.normal(size=(1, 384)))[0]  # one sentence far off
    report = judge({"emb": ref}, {"emb": art}, None)
    cos0 = float(ref[0] @ art[0])
    assert report["cosine_min"] == pytest.approx(cos0, abs=1e-6)
    assert report["cosine_mean"] == pytest.approx((49 + cos0) / 50, abs=1e-6)
    assert report["top1_agreement"] is None
    assert drop_measure(report) == "cosine"
    assert drop_pts(report) == pytest.approx(100 * (1 - (49 + cos0) / 50), abs=1e-3)
    # A bound of 1 point is a mean cosine of 0.99: one unrelated sentence of 50 costs ~1.9.
    assert 1.0 < drop_pts(report) < 2.0


def test_class_scores_drop_by_disagreement_or_by_accuracy_with_labels() -> None:
    ref = np.eye(4)[[0, 1, 2, 3]] * 5.0
    art = np.eye(4)[[0, 1, 2, 0]] * 5.0  # the last sample's class flips
    unlabelled = judge({"logits": ref}, {"logits": art}, None)
    assert "cosine_mean" not in unlabelled
    assert (drop_measure(unlabelled), drop_pts(unlabelled)) == ("agreement", 25.0)
    labelled = judge({"logits": ref}, {"logits": art}, np.array([0, 1, 2, 0]))
    assert (drop_measure(labelled), drop_pts(labelled)) == ("accuracy", -25.0)


def test_an_output_that_is_neither_has_no_drop_and_says_so() -> None:
    ref = np.linspace(0, 1, 10).reshape(10, 1)  # one value per sample: a regression
    report = judge({"y": ref}, {"y": ref * 1.01}, None)
    assert drop_measure(report) is None
    with pytest.raises(
        UsageError, match="no output of this model is class scores or an L2-normalised"
    ):
        drop_pts(report)
