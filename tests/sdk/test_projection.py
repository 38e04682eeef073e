"""The reference PCA of a tabular input: fitted at convert time, stored, applied per sample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedl.errors import DataError
from edgedl.profile import Profile
from edgedl.projection import Projection


def _rows(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    x = rng.standard_normal((n, 2))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
    return x


def test_a_tabular_reference_gets_a_pca_error_statistic_that_survives_json() -> None:
    rng = np.random.default_rng(0)
    profile = Profile.from_reference({"t": _rows(rng, 2000, 0.5)}, {})
    assert set(profile.projections) == {"t"}
    assert "input/t/pca_error" in profile.histograms
    # One component kept of two: what it leaves out is the error.
    assert profile.projections["t"].components.shape == (1, 2)
    back = Profile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert back.to_dict() == profile.to_dict()
    live = back.empty_like()
    live.observe({"t": _rows(rng, 300, 0.5)}, {})
    assert live.histograms["input/t/pca_error"].count == 300
    # A telemetry window's profile leaves the projections to the bundle.
    assert "projections" not in live.to_dict(projections=False)


def test_a_profile_written_before_projections_still_loads_and_observes() -> None:
    rng = np.random.default_rng(1)
    old = Profile.from_reference({"t": _rows(rng, 500, 0.5)}, {}).to_dict()
    del old["projections"]
    del old["histograms"]["input/t/pca_error"]
    profile = Profile.from_dict(old)
    assert profile.projections == {}
    live = profile.empty_like()
    live.observe({"t": _rows(rng, 50, 0.5)}, {})
    assert "input/t/pca_error" not in live.histograms
    assert live.histograms["input/t/feature[0]"].count == 50


def test_the_error_grows_when_the_correlation_changes_and_nan_rows_are_missing() -> None:
    rng = np.random.default_rng(2)
    projection = Projection.fit(_rows(rng, 5000, 0.5))
    assert projection is not None
    same = projection.error(_rows(rng, 5000, 0.5)).mean()
    independent = projection.error(_rows(rng, 5000, 0.0)).mean()
    assert independent > 1.5 * same
    err = projection.error(np.array([projection.mean, [np.nan, 1.0]]))
    assert err[0] == 0.0 and np.isnan(err[1])  # the reference mean reconstructs exactly


def test_nothing_is_fitted_on_one_feature_or_too_few_rows() -> None:
    rng = np.random.default_rng(3)
    assert Projection.fit(rng.standard_normal((100, 1))) is None
    assert Projection.fit(rng.standard_normal((6, 2))) is None


def test_a_malformed_projection_is_refused() -> None:
    with pytest.raises(DataError, match="projection"):
        Projection.from_dict({"mean": [0.0, 0.0], "scale": [1.0, 1.0], "components": [[1.0]]})
