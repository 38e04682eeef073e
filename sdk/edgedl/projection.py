"""Multivariate drift as one number per sample: the reconstruction error of a reference PCA.

Per-feature histograms cannot see a change in how features move together: two features can
keep their own distributions while their correlation flips. A :class:`Projection` is fitted at
convert time on the reference rows of a tabular input (NannyML's data-reconstruction drift):
standardise each feature by its reference mean and standard deviation, keep the principal
components that explain :data:`EXPLAINED_VARIANCE` of the variance (at most all but one, so
something is left to reconstruct), and score each sample by the mean squared difference
between its standardised features and their projection back from those components. Rows that
move as the reference did reconstruct well; a changed correlation leaves more outside the kept
components. The score is a scalar per sample, so it is binned on reference-quantile edges
like every other statistic (``input/<tensor>/pca_error``) and compared by the collector in
the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DataError

FloatArray = NDArray[np.float64]

EXPLAINED_VARIANCE = 0.65  # NannyML's default
MIN_ROWS_PER_FEATURE = 5


@dataclass(frozen=True)
class Projection:
    """A PCA of reference rows: ``mean`` and ``scale`` per feature, ``components`` (k × F)."""

    mean: FloatArray
    scale: FloatArray
    components: FloatArray

    @classmethod
    def fit(cls, rows: NDArray[Any]) -> Projection | None:
        """Fit on reference rows (samples × features); None when there is nothing to fit.

        Needs at least two features and :data:`MIN_ROWS_PER_FEATURE` complete (finite) rows
        per feature; constant features get a scale of 1.
        """
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < 2:
            return None
        x = x[np.all(np.isfinite(x), axis=1)]
        if x.shape[0] < MIN_ROWS_PER_FEATURE * x.shape[1]:
            return None
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale
        _, singular, vt = np.linalg.svd(z, full_matrices=False)
        variance = singular**2
        if variance.sum() <= 0:
            return None
        explained = np.cumsum(variance) / variance.sum()
        k = int(np.searchsorted(explained, EXPLAINED_VARIANCE) + 1)
        k = min(k, x.shape[1] - 1)
        return cls(mean=mean, scale=scale, components=np.ascontiguousarray(vt[:k]))

    @property
    def features(self) -> int:
        """How many features a row must have."""
        return int(self.mean.size)

    def error(self, rows: NDArray[Any]) -> FloatArray:
        """Reconstruction error per row (NaN for a row with a non-finite feature)."""
        x = np.asarray(rows, dtype=np.float64)
        z = (x - self.mean) / self.scale
        with np.errstate(invalid="ignore"):
            residual = z - (z @ self.components.T) @ self.components
            err = np.mean(residual * residual, axis=1)
        return np.asarray(np.where(np.all(np.isfinite(x), axis=1), err, np.nan), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back exactly."""
        return {
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "components": [[float(v) for v in row] for row in self.components],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Projection:
        """Read :meth:`to_dict`'s form, checking the shapes agree."""
        try:
            mean = np.asarray(data["mean"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
            components = np.asarray(data["components"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed projection: {exc}") from exc
        f = mean.size
        if (
            mean.ndim != 1
            or scale.shape != (f,)
            or components.ndim != 2
            or components.shape[1] != f
            or not components.shape[0] < f
            or not (
                np.all(np.isfinite(mean)) and np.all(scale > 0) and np.all(np.isfinite(components))
            )
        ):
            raise DataError("malformed projection: shapes or values do not fit")
        return cls(mean=mean, scale=scale, components=components)


__all__ = ["EXPLAINED_VARIANCE", "Projection"]
