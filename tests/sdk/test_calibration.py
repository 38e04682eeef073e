"""Accuracy estimated from confidences (edgedl.calibration) on a model whose confidences are
honest by construction: a prediction of confidence c is right with probability c.

The estimate must hold the real accuracy within its interval on fresh data, also when the
confidences shift (covariate shift); it must not see a concept shift (labels that changed
meaning), and it must add up over windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgedl.calibration import Calibration, Estimate, fit_calibration
from edgedl.errors import DataError
from edgedl.profile import Histogram

CLASSES = 10


def honest(rng: np.random.Generator, n: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """Confidences from Beta(a, b) stretched over [1/10, 1], right with that probability."""
    conf = 0.1 + 0.9 * rng.beta(a, b, n)
    return conf, rng.random(n) < conf


def fitted(rng: np.random.Generator) -> Calibration:
    conf, right = honest(rng, 5000, 5.0, 1.5)
    edges = Histogram.from_reference(conf, bins=12).edges
    return fit_calibration("output/probs/top1_confidence", edges, conf, right, CLASSES)


def estimate_of(cal: Calibration, conf: np.ndarray) -> Estimate:
    hist = Histogram.empty(np.asarray(cal.edges))
    hist.add(conf)
    return cal.estimate(hist.counts)


@pytest.mark.parametrize(("a", "b"), [(5.0, 1.5), (4.0, 1.5), (3.0, 2.0)])
def test_estimate_holds_real_accuracy_under_covariate_shift(a: float, b: float) -> None:
    rng = np.random.default_rng(3)
    cal = fitted(rng)
    conf, right = honest(rng, 2000, a, b)
    guess = estimate_of(cal, conf).to_dict()
    real = float(right.mean())
    assert guess["low"] <= real <= guess["high"], (guess, real)
    assert abs(guess["accuracy"] - real) < 0.05


def test_estimate_does_not_see_a_concept_shift() -> None:
    rng = np.random.default_rng(4)
    cal = fitted(rng)
    conf, right = honest(rng, 2000, 5.0, 1.5)
    flipped = right & (rng.random(right.size) > 0.5)  # half the right answers now wrong
    guess = estimate_of(cal, conf)
    assert guess.accuracy is not None
    assert guess.accuracy - float(flipped.mean()) > 0.25


def test_estimates_add_up_and_round_trip() -> None:
    rng = np.random.default_rng(5)
    cal = fitted(rng)
    assert Calibration.from_dict(cal.to_dict()) == cal
    one, two = rng.uniform(0.2, 1.0, 300), rng.uniform(0.2, 1.0, 500)
    merged = estimate_of(cal, one) + estimate_of(cal, two)
    together = estimate_of(cal, np.concatenate([one, two]))
    assert merged.predictions == together.predictions == 800
    assert merged.expected_correct == pytest.approx(together.expected_correct)
    # Below every validation confidence: counted, and said to be extrapolated.
    low = estimate_of(cal, np.full(10, 0.11))
    assert low.extrapolated == 10 and low.accuracy is not None and low.accuracy < 0.3
    with pytest.raises(DataError, match="malformed calibration"):
        Calibration.from_dict({"edges": [0.5]})
    with pytest.raises(DataError, match="do not match"):
        cal.estimate([1, 2, 3])
