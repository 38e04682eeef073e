"""What one window holds per model version, in forms cheap to update one event at a time.

The :class:`~.window.WindowBuilder` owns these and their lock; nothing here locks.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.profile import Profile
from edgedl.telemetry import (
    BATCH_SIZE_EDGES,
    LATENCY_EDGES_MS,
    MAX_CONFUSION_CELLS,
    MAX_LABEL_IDS,
    Counts,
    HistogramData,
    LabelCounts,
    ModelLabels,
    ModelWindow,
    ProfileData,
    label_digest,
)

from ..observe import Tensors

#: One batch's (inputs, outputs), kept until its statistics are computed.
Batch = tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]


def copy_tensors(tensors: Tensors) -> dict[str, NDArray[Any]]:
    """Own copies of a batch's tensors (the runtime may reuse its buffers)."""
    return {name: np.array(arr, copy=True) for name, arr in tensors.items()}


def joined(batches: list[Batch]) -> list[Batch]:
    """The batches as one (concatenated on the batch axis), or as they are when shapes differ."""
    if len(batches) == 1:
        return batches
    try:
        inputs = {k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]}
        outputs = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    except (ValueError, KeyError):
        return batches
    return [(inputs, outputs)]


@dataclass(frozen=True)
class ModelInfo:
    """What the window needs to know about a served model version."""

    name: str
    version: str
    sha256: str
    reference: Profile | None = None
    latency_threshold_ms: float | None = None


#: Looks up a model version the builder has not seen yet (None when unknown).
ModelResolver = Callable[[str, str], "ModelInfo | None"]


class Bins:
    """A histogram on fixed edges kept in Python lists: cheap for one value at a time."""

    __slots__ = ("count", "counts", "edges", "last", "total", "total_sq")

    def __init__(self, edges: tuple[float, ...]) -> None:
        self.edges = edges
        self.last = len(edges) - 1
        self.counts = [0] * (len(edges) + 1)
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0

    def add(self, value: float) -> None:
        """Count one value (binned as :meth:`edgedl.profile.Histogram.add` bins it)."""
        i = bisect_right(self.edges, value)
        if i == len(self.edges) and value == self.edges[-1]:
            i = self.last  # the last inner bin is closed on the right, as in Histogram
        self.counts[i] += 1
        self.count += 1
        self.total += value
        self.total_sq += value * value

    def to_data(self) -> HistogramData:
        """The histogram as the contract carries it."""
        return HistogramData(
            edges=list(self.edges),
            counts=list(self.counts),
            count=self.count,
            sum=self.total,
            sum_sq=self.total_sq,
        )


class ModelCounts:
    """The window's counters as plain ints (a pydantic model is slow to increment)."""

    __slots__ = ("errors", "inferences", "latency_violations", "rejected", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.inferences = 0
        self.errors = 0
        self.rejected = 0
        self.latency_violations = 0

    def to_data(self) -> Counts:
        """The counts as the contract carries them."""
        return Counts(
            requests=self.requests,
            inferences=self.inferences,
            errors=self.errors,
            rejected=self.rejected,
            latency_violations=self.latency_violations,
        )


@dataclass
class ModelAccumulator:
    """One model version's part of a window: counts, latency and batch-size bins, the input
    profile (when it has a reference), batches waiting to be folded, and label outcomes."""

    info: ModelInfo
    counts: ModelCounts = field(default_factory=ModelCounts)
    latency: Bins = field(default_factory=lambda: Bins(LATENCY_EDGES_MS))
    batch_size: Bins = field(default_factory=lambda: Bins(BATCH_SIZE_EDGES))
    profile: Profile | None = None
    pending: list[Batch] = field(default_factory=list)
    pending_samples: int = 0
    busy: int = 0  # folds of this model's batches running outside the lock
    confusion: dict[tuple[int, int], int] = field(default_factory=dict)
    confusion_overflow: int = 0
    label_ids: list[str] = field(default_factory=list)  # label_digest of each labelled id
    label_ids_overflow: int = 0

    def __post_init__(self) -> None:
        if self.info.reference is not None:
            self.profile = self.info.reference.empty_like()

    def take_pending(self) -> list[Batch]:
        """Hand over the buffered batches to fold (call with the builder's lock)."""
        batches, self.pending, self.pending_samples = self.pending, [], 0
        self.busy += 1
        return batches

    def add_labels(self, pairs: list[tuple[int, int]]) -> None:
        """Count (actual, predicted) pairs into the confusion matrix (at most
        :data:`MAX_CONFUSION_CELLS` cells; pairs of further cells only in the overflow)."""
        cells = self.confusion
        for pair in pairs:
            if pair in cells:
                cells[pair] += 1
            elif len(cells) < MAX_CONFUSION_CELLS:
                cells[pair] = 1
            else:
                self.confusion_overflow += 1

    def add_label_id(self, request_id: str) -> None:
        """Remember the digest of a labelled prediction's id (at most :data:`MAX_LABEL_IDS`;
        further ones only counted)."""
        if len(self.label_ids) < MAX_LABEL_IDS:
            self.label_ids.append(label_digest(request_id))
        else:
            self.label_ids_overflow += 1

    def to_window(self) -> ModelWindow:
        """This model version's part of the window, as the contract carries it."""
        profile = (
            ProfileData.model_validate(self.profile.to_dict(projections=False))
            if self.profile
            else None
        )
        return ModelWindow(
            name=self.info.name,
            version=self.info.version,
            sha256=self.info.sha256,
            counts=self.counts.to_data(),
            latency_ms=self.latency.to_data(),
            batch_size=self.batch_size.to_data(),
            profile=profile,
            labels=(
                ModelLabels(
                    confusion=[(a, p, c) for (a, p), c in sorted(self.confusion.items())],
                    overflow=self.confusion_overflow,
                    ids=self.label_ids or None,
                    ids_overflow=self.label_ids_overflow,
                )
                if self.confusion or self.confusion_overflow
                else None
            ),
        )


@dataclass
class WindowState:
    """The window being built: its start time, an accumulator per model version, the
    inferences so far, the sampled per-sample records and the label outcome counts."""

    start: float
    models: dict[tuple[str, str], ModelAccumulator] = field(default_factory=dict)
    inferences: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)  # LabelCounts field -> count

    def label_counts(self) -> LabelCounts | None:
        """The window's label outcomes as the contract carries them (None when none came)."""
        return LabelCounts(**self.labels) if self.labels else None
