"""Data profiles: histograms on fixed reference edges, mergeable by addition.

A :class:`Profile` is what ``edgedl convert`` writes into a bundle's manifest as the
*reference profile* and what the agent accumulates over a telemetry window. Both are the same
kind of value (histograms on the same bin edges), so the cloud compares like with like, and
device windows sum into fleet windows with :meth:`Profile.merge`.

Statistic keys are ``"input/<tensor>/<stat>"`` and ``"output/<tensor>/<stat>"``:

* every input: per-sample ``mean``, ``std``, ``min``, ``max`` (over finite elements),
  ``nonfinite`` (share of NaN/Inf elements) and ``length`` (elements per sample);
  a 2-D input of at most :data:`MAX_FEATURES` columns also gets ``feature[i]`` per column,
  and, when the reference profile holds a :class:`~edgedl.projection.Projection` of it (two
  or more columns), ``pca_error``: how badly a reference PCA reconstructs the sample, which
  sees changes in how the features move together;
* a classification output (2-D, two or more classes): ``top1_confidence`` and class counts
  in :attr:`Profile.class_counts`;
* any other output: per-sample ``mean``.

Edges are reference quantiles (``bins`` of them, deduplicated) plus two open-ended overflow
bins, so the live side needs no reference data to bin a value. Each histogram also carries
count, sum and sum of squares of what it saw, which merge exactly and give mean and std.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DataError
from .projection import Projection

PROFILE_SCHEMA_VERSION = 1
DEFAULT_BINS = 10
MAX_FEATURES = 64
#: Largest magnitude a histogram counts (the telemetry contract's range, edgedl.telemetry);
#: values beyond it are counted in ``missing``, as non-finite ones are.
MAX_VALUE = 1e100
_INPUT_STATS = ("mean", "std", "min", "max", "nonfinite", "length")

FloatArray = NDArray[np.float64]


@dataclass
class Histogram:
    """Counts of values on fixed edges, plus exact moments.

    ``counts`` has ``len(edges) + 1`` entries: values below ``edges[0]``, one per inner bin
    ``[edges[i], edges[i+1])`` (the last inner bin is closed on the right), and values above
    ``edges[-1]``. Non-finite values, and values beyond +-:data:`MAX_VALUE`, are counted in
    ``missing`` and in no bin.
    """

    edges: FloatArray
    counts: NDArray[np.int64]
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    missing: int = 0

    @classmethod
    def from_reference(cls, values: NDArray[Any], bins: int = DEFAULT_BINS) -> Histogram:
        """Fix edges on the quantiles of ``values`` and count them on those edges."""
        finite = np.asarray(values, dtype=np.float64).ravel()
        finite = finite[np.abs(finite) <= MAX_VALUE]
        if finite.size == 0:
            edges = np.array([-1.0, 1.0])
        else:
            edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
            if edges.size == 1:  # a constant statistic: one narrow bin around it
                pad = max(abs(float(edges[0])) * 1e-6, 1e-12)
                edges = np.array([edges[0] - pad, edges[0] + pad])
        hist = cls.empty(edges)
        hist.add(values)
        return hist

    @classmethod
    def empty(cls, edges: NDArray[Any]) -> Histogram:
        """A histogram with these edges and nothing counted."""
        edges = np.asarray(edges, dtype=np.float64)
        return cls(edges=edges, counts=np.zeros(edges.size + 1, dtype=np.int64))

    def empty_like(self) -> Histogram:
        """A histogram on the same edges with nothing counted."""
        return Histogram.empty(self.edges)

    def add(self, values: NDArray[Any]) -> None:
        """Count ``values`` into the bins (in place)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        finite_mask = np.abs(v) <= MAX_VALUE  # False for NaN and the infinities too
        finite = v[finite_mask]
        self.missing += int(v.size - finite.size)
        if finite.size == 0:
            return
        idx = np.searchsorted(self.edges, finite, side="right")
        idx[finite == self.edges[-1]] = self.edges.size - 1  # last inner bin is right-closed
        self.counts += np.bincount(idx, minlength=self.counts.size).astype(np.int64)
        self.count += int(finite.size)
        self.total += float(finite.sum())
        self.total_sq += float(np.square(finite).sum())

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both samples together; edges must be the same."""
        if not np.array_equal(self.edges, other.edges):
            raise DataError("cannot merge histograms with different bin edges")
        return Histogram(
            edges=self.edges,
            counts=self.counts + other.counts,
            count=self.count + other.count,
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            missing=self.missing + other.missing,
        )

    @property
    def mean(self) -> float:
        """Mean of the finite values seen (NaN when none)."""
        return self.total / self.count if self.count else float("nan")

    @property
    def std(self) -> float:
        """Population standard deviation of the finite values seen (NaN when none)."""
        if not self.count:
            return float("nan")
        var = self.total_sq / self.count - self.mean**2
        return float(np.sqrt(max(var, 0.0)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back exactly."""
        return {
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "count": self.count,
            "sum": self.total,
            "sum_sq": self.total_sq,
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        """Read a dict written by :meth:`to_dict`, checking that counts fit the edges."""
        try:
            edges = np.asarray(data["edges"], dtype=np.float64)
            counts = np.asarray(data["counts"], dtype=np.int64)
            hist = cls(
                edges=edges,
                counts=counts,
                count=int(data.get("count", int(counts.sum()))),
                total=float(data.get("sum", 0.0)),
                total_sq=float(data.get("sum_sq", 0.0)),
                missing=int(data.get("missing", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed histogram: {exc}") from exc
        if edges.ndim != 1 or edges.size < 2 or counts.shape != (edges.size + 1,):
            raise DataError(
                f"malformed histogram: {counts.size} counts do not fit {edges.size} edges"
            )
        if not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise DataError("malformed histogram: edges must be finite and increasing")
        if np.any(counts < 0):
            raise DataError("malformed histogram: negative count")
        return hist


def _softmax(x: FloatArray) -> FloatArray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def _is_classification(arr: NDArray[Any]) -> bool:
    return arr.ndim == 2 and arr.shape[1] >= 2


def predicted_classes(outputs: Mapping[str, NDArray[Any]]) -> tuple[NDArray[np.int64], int] | None:
    """The predicted class of each sample (the argmax of the first classification output, as
    :func:`batch_statistics` counts it) and the number of classes; None without such an output.
    """
    for arr in outputs.values():
        y = np.asarray(arr)
        if _is_classification(y):
            scores = y if y.dtype.kind != "f" else np.nan_to_num(y, nan=-np.inf)
            return np.argmax(scores, axis=1), int(y.shape[1])
    return None


#: How far from 1 the scores of one row of probabilities may sum, per class: an int8 output
#: dequantizes each score to a multiple of 1/256, so ten rounded scores can miss 1 by 10/512.
_SUM_SLACK_PER_CLASS = 1 / 256


def _top1(y: FloatArray) -> FloatArray:
    """Top-1 probability of each row of a classification output (softmax of logits; NaN for
    a row holding a non-finite score). Rows in [0, 1] that sum to 1 within the rounding of
    int8 scores (:data:`_SUM_SLACK_PER_CLASS`, at least 0.01) are probabilities already."""
    finite_rows = np.all(np.isfinite(y), axis=1)
    probs = np.full(y.shape, np.nan)
    if finite_rows.any():
        rows = y[finite_rows]
        slack = max(1e-2, _SUM_SLACK_PER_CLASS * rows.shape[1])
        is_dist = (
            np.all(rows >= -1e-6)
            and np.all(rows <= 1 + 1e-6)
            and np.allclose(rows.sum(axis=1), 1.0, atol=slack)
        )
        probs[finite_rows] = rows if is_dist else _softmax(rows)
    with _quiet_nan_warnings():
        return np.asarray(np.nanmax(probs, axis=1), dtype=np.float64)


def top1_confidence(outputs: Mapping[str, NDArray[Any]]) -> FloatArray | None:
    """The top-1 confidence of each sample in the first classification output (the one
    :func:`predicted_classes` reads), as telemetry counts it; None without such an output."""
    for arr in outputs.values():
        y = np.asarray(arr)
        if _is_classification(y):
            return _top1(np.asarray(y, dtype=np.float64))
    return None


def batch_statistics(
    inputs: Mapping[str, NDArray[Any]],
    outputs: Mapping[str, NDArray[Any]],
    projections: Mapping[str, Projection] | None = None,
) -> tuple[dict[str, FloatArray], dict[str, NDArray[np.int64]]]:
    """Per-sample statistics of one batch: ``({key: values per sample}, {key: predicted classes})``.

    The first axis of every array is the batch. ``projections`` (a reference profile's, by
    input name) add ``pca_error`` for the inputs they fit.
    """
    stats: dict[str, FloatArray] = {}
    classes: dict[str, NDArray[np.int64]] = {}
    for name, arr in inputs.items():
        x = np.asarray(arr, dtype=np.float64)
        n = x.shape[0]
        flat = x.reshape(n, -1)
        finite = np.isfinite(flat)
        masked = np.where(finite, flat, np.nan)
        width = flat.shape[1]
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            stats[f"input/{name}/mean"] = np.nanmean(masked, axis=1) if width else np.zeros(n)
            stats[f"input/{name}/std"] = np.nanstd(masked, axis=1) if width else np.zeros(n)
            stats[f"input/{name}/min"] = np.nanmin(masked, axis=1) if width else np.zeros(n)
            stats[f"input/{name}/max"] = np.nanmax(masked, axis=1) if width else np.zeros(n)
        stats[f"input/{name}/nonfinite"] = 1.0 - finite.mean(axis=1) if width else np.zeros(n)
        stats[f"input/{name}/length"] = np.full(n, float(width))
        if x.ndim == 2 and 0 < width <= MAX_FEATURES:
            for i in range(width):
                stats[f"input/{name}/feature[{i}]"] = masked[:, i]
            projection = (projections or {}).get(name)
            if projection is not None and projection.features == width:
                stats[f"input/{name}/pca_error"] = projection.error(flat)
    for name, arr in outputs.items():
        y = np.asarray(arr, dtype=np.float64)
        if _is_classification(y):
            stats[f"output/{name}/top1_confidence"] = _top1(y)
            classes[f"output/{name}"] = np.argmax(np.nan_to_num(y, nan=-np.inf), axis=1)
        else:
            flat = y.reshape(y.shape[0], -1)
            with np.errstate(all="ignore"), _quiet_nan_warnings():
                stats[f"output/{name}/mean"] = np.nanmean(
                    np.where(np.isfinite(flat), flat, np.nan), axis=1
                )
    return stats, classes


@contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    """Silence NumPy's 'all-NaN slice' warnings: an all-NaN sample is counted as missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


@dataclass
class Profile:
    """Histograms of per-sample statistics and class counts over some samples.

    Build a reference with :meth:`from_reference`; accumulate live data into
    ``reference.empty_like()`` with :meth:`observe`; sum windows with :meth:`merge`.
    """

    histograms: dict[str, Histogram] = field(default_factory=dict)
    class_counts: dict[str, NDArray[np.int64]] = field(default_factory=dict)
    samples: int = 0
    projections: dict[str, Projection] = field(default_factory=dict)

    @classmethod
    def from_reference(
        cls,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Mapping[str, NDArray[Any]],
        bins: int = DEFAULT_BINS,
    ) -> Profile:
        """Fix edges on the reference data's quantiles and count the reference on them.

        Tabular inputs (2-D, 2 to :data:`MAX_FEATURES` columns) also get a PCA fitted on
        their rows, kept in :attr:`projections`.
        """
        projections: dict[str, Projection] = {}
        for name, arr in inputs.items():
            x = np.asarray(arr)
            if x.ndim == 2 and 2 <= x.shape[1] <= MAX_FEATURES:
                fitted = Projection.fit(x)
                if fitted is not None:
                    projections[name] = fitted
        stats, classes = batch_statistics(inputs, outputs, projections)
        counts: dict[str, NDArray[np.int64]] = {}
        for name, arr in outputs.items():
            key = f"output/{name}"
            if key in classes:
                n_classes = int(np.asarray(arr).shape[1])
                counts[key] = np.bincount(classes[key], minlength=n_classes).astype(np.int64)
        n = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        return cls(
            histograms={k: Histogram.from_reference(v, bins) for k, v in stats.items()},
            class_counts=counts,
            samples=n,
            projections=projections,
        )

    def empty_like(self) -> Profile:
        """A profile on the same edges, classes and projections with nothing counted."""
        return Profile(
            histograms={k: h.empty_like() for k, h in self.histograms.items()},
            class_counts={k: np.zeros_like(c) for k, c in self.class_counts.items()},
            projections=dict(self.projections),
        )

    def observe(
        self, inputs: Mapping[str, NDArray[Any]], outputs: Mapping[str, NDArray[Any]]
    ) -> None:
        """Count one batch in place. Statistics the profile does not know are ignored."""
        stats, classes = batch_statistics(inputs, outputs, self.projections)
        samples = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        self.add_statistics(stats, classes, samples)

    def add_statistics(
        self,
        stats: Mapping[str, FloatArray],
        classes: Mapping[str, NDArray[np.int64]],
        samples: int,
    ) -> None:
        """Count a batch whose :func:`batch_statistics` are already computed, in place.

        For callers that need the statistics for more than one profile: they are computed
        once and counted into each. Statistics the profile does not know are ignored.
        """
        for key, values in stats.items():
            hist = self.histograms.get(key)
            if hist is not None:
                hist.add(values)
        for key, predicted in classes.items():
            counts = self.class_counts.get(key)
            if counts is not None:
                counts += np.bincount(predicted, minlength=counts.size)[: counts.size]
        self.samples += samples

    def merge(self, other: Profile) -> Profile:
        """The profile of both together (statistics present in only one are kept)."""
        # Keys present on one side only are copied, so the result never aliases an operand.
        hists = {k: h.merge(h.empty_like()) for k, h in self.histograms.items()}
        for key, hist in other.histograms.items():
            hists[key] = hists[key].merge(hist) if key in hists else hist.merge(hist.empty_like())
        counts = {k: c.copy() for k, c in self.class_counts.items()}
        for key, c in other.class_counts.items():
            if key in counts and counts[key].shape != c.shape:
                raise DataError(f"cannot merge class counts of {key}: different class numbers")
            counts[key] = counts[key] + c if key in counts else c.copy()
        return Profile(
            histograms=hists,
            class_counts=counts,
            samples=self.samples + other.samples,
            projections={**other.projections, **self.projections},
        )

    def to_dict(self, projections: bool = True) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back exactly.

        ``projections`` (when there are any) go only into a reference profile; a telemetry
        window's profile leaves them out (``projections=False``).
        """
        out = {
            "schema_version": PROFILE_SCHEMA_VERSION,
            "samples": self.samples,
            "histograms": {k: h.to_dict() for k, h in sorted(self.histograms.items())},
            "class_counts": {k: [int(x) for x in c] for k, c in sorted(self.class_counts.items())},
        }
        if projections and self.projections:
            out["projections"] = {k: p.to_dict() for k, p in sorted(self.projections.items())}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Read a dict written by :meth:`to_dict`."""
        try:
            version = int(data.get("schema_version", PROFILE_SCHEMA_VERSION))
            if version != PROFILE_SCHEMA_VERSION:
                raise DataError(f"unsupported profile schema_version {version}")
            return cls(
                histograms={
                    str(k): Histogram.from_dict(v) for k, v in data.get("histograms", {}).items()
                },
                class_counts={
                    str(k): np.asarray(v, dtype=np.int64)
                    for k, v in data.get("class_counts", {}).items()
                },
                samples=int(data.get("samples", 0)),
                # Profiles written before projections existed have none.
                projections={
                    str(k): Projection.from_dict(v)
                    for k, v in (data.get("projections") or {}).items()
                },
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise DataError(f"malformed profile: {exc}") from exc
