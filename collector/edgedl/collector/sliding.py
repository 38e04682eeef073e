"""Sliding windows of telemetry, summed on the reference profile's bins.

A :class:`Contribution` is one model window's figures laid out on a reference's rows, so
sums are plain array additions. A :class:`SlidingWindow` keeps the ``capacity`` contributions
of one device that arrived last (each ``(epoch, seq)`` once) and their running total; ordered
by arrival, not by seq, so no seq, however large, can hold a place in it for good; the fleet total of a model
version is the sum of its devices' totals, kept by adding what a device adds and subtracting
what it evicts.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from edgedl.telemetry import LATENCY_EDGES_MS, ModelWindow

from .references import ReferenceModel

LATENCY_BINS = len(LATENCY_EDGES_MS) + 1


_REQUESTS, _ERRORS, _INFERENCES, _SAMPLES = range(LATENCY_BINS, LATENCY_BINS + 4)


class Contribution:
    """Figures of one or more model windows on a reference's rows (summable).

    Packed in two arrays so that adding one contribution to another is a couple of NumPy
    operations: ``table`` holds per statistic the bin counts, then the sum and the count of
    the values; ``scalars`` holds the latency histogram, then requests, errors, inferences and
    profile samples.
    """

    __slots__ = ("classes", "epoch", "scalars", "seq", "table", "width")

    def __init__(
        self,
        table: NDArray[np.float64],
        scalars: NDArray[np.float64],
        classes: dict[str, NDArray[np.float64]],
        width: int,
        seq: int = -1,
        epoch: str = "",
    ) -> None:
        self.table = table
        self.scalars = scalars
        self.classes = classes
        self.width = width
        self.seq = seq
        self.epoch = epoch

    @classmethod
    def empty(cls, reference: ReferenceModel | None) -> Contribution:
        """Nothing counted, shaped for ``reference`` (or for latency only when None)."""
        rows = len(reference.stats) if reference else 0
        width = reference.width if reference else 0
        classes = (
            {k: np.zeros_like(v) for k, v in reference.class_counts.items()} if reference else {}
        )
        return cls(np.zeros((rows, width + 2)), np.zeros(LATENCY_BINS + 4), classes, width)

    @classmethod
    def from_window(
        cls, seq: int, model: ModelWindow, reference: ReferenceModel | None, epoch: str = ""
    ) -> tuple[Contribution, int]:
        """A model window on ``reference``'s rows; also how many histograms did not fit."""
        counts = model.counts
        profile = model.profile
        samples = profile.samples if (profile is not None and reference is not None) else 0
        scalars = np.array(
            [*model.latency_ms.counts, counts.requests, counts.errors, counts.inferences, samples],
            dtype=np.float64,
        )
        mismatched = 0
        classes: dict[str, NDArray[np.float64]] = {}
        if reference is None:
            return cls(np.zeros((0, 2)), scalars, classes, 0, seq, epoch), 0
        width = reference.width
        rows: list[list[float]] = []
        histograms = profile.histograms if profile is not None else {}
        for stat, edges in zip(reference.stats, reference.edge_lists, strict=True):
            hist = histograms.get(stat)
            if hist is None or hist.edges != edges:
                mismatched += hist is not None
                rows.append([0.0] * (width + 2))
                continue
            rows.append([*hist.counts, *([0] * (width - len(hist.counts))), hist.sum, hist.count])
        table = np.array(rows, dtype=np.float64).reshape(len(rows), width + 2)
        live_classes = profile.class_counts if profile is not None else {}
        for key, ref_counts in reference.class_counts.items():
            live = live_classes.get(key)
            if live is not None and len(live) == ref_counts.size:
                classes[key] = np.array(live, dtype=np.float64)
            else:
                mismatched += live is not None
                classes[key] = np.zeros_like(ref_counts)
        return cls(table, scalars, classes, width, seq, epoch), mismatched

    def add(self, other: Contribution, sign: float = 1.0) -> None:
        """Add (or with ``sign=-1`` subtract) another contribution in place."""
        if other.table.shape == self.table.shape:
            self.table += sign * other.table
        for key, value in other.classes.items():
            mine = self.classes.get(key)
            if mine is not None and mine.shape == value.shape:
                mine += sign * value
        self.scalars += sign * other.scalars

    @property
    def counts(self) -> NDArray[np.float64]:
        """Bin counts, one row per reference statistic."""
        return self.table[:, : self.width]

    @property
    def sums(self) -> NDArray[np.float64]:
        """Sum of the values of each statistic."""
        return self.table[:, self.width]

    @property
    def ns(self) -> NDArray[np.float64]:
        """How many values of each statistic were counted."""
        return self.table[:, self.width + 1]

    @property
    def latency(self) -> NDArray[np.float64]:
        """The latency histogram's counts (on LATENCY_EDGES_MS)."""
        return self.scalars[:LATENCY_BINS]

    @property
    def requests(self) -> int:
        """Requests counted."""
        return int(self.scalars[_REQUESTS])

    @property
    def errors(self) -> int:
        """Errors counted."""
        return int(self.scalars[_ERRORS])

    @property
    def inferences(self) -> int:
        """Inferences counted."""
        return int(self.scalars[_INFERENCES])

    @property
    def samples(self) -> int:
        """Profile samples counted."""
        return int(self.scalars[_SAMPLES])


class SlidingWindow:
    """The newest ``capacity`` contributions of one device and model version, and their sum."""

    def __init__(self, capacity: int, reference: ReferenceModel | None) -> None:
        self.capacity = capacity
        self.reference = reference
        self.total = Contribution.empty(reference)
        self._entries: dict[tuple[str, int], Contribution] = {}  # in arrival order

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, c: Contribution) -> tuple[bool, Contribution | None]:
        """Take a contribution: ``(taken, evicted)``. A repeated ``(epoch, seq)`` is not taken;
        past ``capacity`` the contribution that arrived first is evicted."""
        if (c.epoch, c.seq) in self._entries:
            return False, None
        self._entries[(c.epoch, c.seq)] = c
        self.total.add(c)
        evicted = None
        if len(self._entries) > self.capacity:
            evicted = self._entries.pop(next(iter(self._entries)))
            self.total.add(evicted, -1.0)
        return True, evicted


class LatencyBaseline:
    """A device's own latency: its first windows, at least ``windows`` and ``min_samples``."""

    def __init__(self, windows: int, min_samples: int) -> None:
        self.windows = windows
        self.min_samples = min_samples
        self.latency = np.zeros(LATENCY_BINS)
        self._seqs: set[tuple[str, int]] = set()

    @property
    def complete(self) -> bool:
        """Whether the baseline is fixed."""
        return len(self._seqs) >= self.windows and self.latency.sum() >= self.min_samples

    def add(self, c: Contribution) -> None:
        """Count a window into the baseline while it is still being built."""
        if self.complete or (c.epoch, c.seq) in self._seqs:
            return
        self._seqs.add((c.epoch, c.seq))
        self.latency += c.latency
