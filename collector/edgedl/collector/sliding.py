"""Sliding windows of telemetry, summed on the reference profile's bins.

A :class:`Contribution` is one model window's figures laid out on a reference's rows, so
sums are plain array additions. A :class:`SlidingWindow` keeps the ``capacity`` contributions
of one device that arrived last (each ``(epoch, seq)`` once) and their running total; ordered
by arrival, not by seq, so no seq, however large, can hold a place in it for good; the fleet
total of a model version is the sum of its devices' totals, kept by adding what a device adds
and removing
what it evicts.

Totals never cancel:

- Counts (bins, values counted, requests, errors, inferences, samples, classes) are int64
  and exact. Integer addition and subtraction are exact modulo 2**64, so a total is right
  whatever was added and removed on the way, as long as the total itself stays below 2**63:
  the telemetry contract caps every count in a window at 2**32 - 1, so a device's sliding
  window holds under 2**42 with up to 1,000 windows (``drift.window_count``), and a fleet
  total needs over two million such devices to reach 2**63.
- Sums of values are floats, and subtracting an evicted window's sum from a float total
  would leave its rounding behind (a value of 1e38 once in the window wipes out every small
  value added after it). So they are never subtracted: :meth:`Contribution.remove` marks the
  sums stale and the owner recomputes them from the contributions it holds
  (:meth:`Contribution.resum`), pairwise, so their error is relative to what is in the window
  now; a value that left the window leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from edgedl.telemetry import LATENCY_EDGES_MS, ModelWindow

from .references import ReferenceModel

LATENCY_BINS = len(LATENCY_EDGES_MS) + 1

_REQUESTS, _ERRORS, _INFERENCES, _SAMPLES = range(LATENCY_BINS, LATENCY_BINS + 4)

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


class Contribution:
    """Figures of one or more model windows on a reference's rows (summable).

    Packed in a few arrays so that adding one contribution to another is a couple of NumPy
    operations: ``table`` holds per statistic the bin counts, then how many values were
    counted (int64); ``value_sums`` the sum of the values per statistic (float); ``scalars``
    the latency histogram, then requests, errors, inferences and profile samples (int64).
    """

    __slots__ = ("classes", "epoch", "scalars", "seq", "stale", "table", "value_sums", "width")

    def __init__(
        self,
        table: IntArray,
        value_sums: FloatArray,
        scalars: IntArray,
        classes: dict[str, IntArray],
        width: int,
        seq: int = -1,
        epoch: str = "",
    ) -> None:
        self.table = table
        self.value_sums = value_sums
        self.scalars = scalars
        self.classes = classes
        self.width = width
        self.seq = seq
        self.epoch = epoch
        self.stale = False

    @classmethod
    def empty(cls, reference: ReferenceModel | None) -> Contribution:
        """Nothing counted, shaped for ``reference`` (or for latency only when None)."""
        rows = len(reference.stats) if reference else 0
        width = reference.width if reference else 0
        classes = (
            {k: np.zeros(v.shape, dtype=np.int64) for k, v in reference.class_counts.items()}
            if reference
            else {}
        )
        return cls(
            np.zeros((rows, width + 1), dtype=np.int64),
            np.zeros(rows),
            np.zeros(LATENCY_BINS + 4, dtype=np.int64),
            classes,
            width,
        )

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
            dtype=np.int64,
        )
        mismatched = 0
        classes: dict[str, IntArray] = {}
        if reference is None:
            return cls(np.zeros((0, 1), np.int64), np.zeros(0), scalars, classes, 0, seq, epoch), 0
        width = reference.width
        rows: list[list[int]] = []
        sums: list[float] = []
        histograms = profile.histograms if profile is not None else {}
        for stat, edges in zip(reference.stats, reference.edge_lists, strict=True):
            hist = histograms.get(stat)
            if hist is None or hist.edges != edges:
                mismatched += hist is not None
                rows.append([0] * (width + 1))
                sums.append(0.0)
                continue
            rows.append([*hist.counts, *([0] * (width - len(hist.counts))), hist.count])
            sums.append(hist.sum)
        table = np.array(rows, dtype=np.int64).reshape(len(rows), width + 1)
        live_classes = profile.class_counts if profile is not None else {}
        for key, ref_counts in reference.class_counts.items():
            live = live_classes.get(key)
            if live is not None and len(live) == ref_counts.size:
                classes[key] = np.array(live, dtype=np.int64)
            else:
                mismatched += live is not None
                classes[key] = np.zeros(ref_counts.shape, dtype=np.int64)
        return cls(
            table, np.array(sums, dtype=np.float64), scalars, classes, width, seq, epoch
        ), mismatched

    def add(self, other: Contribution) -> None:
        """Add another contribution in place."""
        self._add_counts(other, 1)
        if other.value_sums.shape == self.value_sums.shape:
            self.value_sums += other.value_sums

    def remove(self, other: Contribution) -> None:
        """Take another contribution's counts out (exactly); the value sums become stale.

        Call :meth:`resum` with what is left before reading :attr:`sums` again.
        """
        self._add_counts(other, -1)
        self.stale = True

    def resum(self, parts: Iterable[Contribution]) -> None:
        """Set the value sums to the sum of ``parts``' (pairwise, never by subtraction)."""
        same = [p.value_sums for p in parts if p.value_sums.shape == self.value_sums.shape]
        self.value_sums = np.sum(same, axis=0) if same else np.zeros_like(self.value_sums)
        self.stale = False

    def _add_counts(self, other: Contribution, sign: int) -> None:
        if other.table.shape == self.table.shape:
            self.table += sign * other.table
        for key, value in other.classes.items():
            mine = self.classes.get(key)
            if mine is not None and mine.shape == value.shape:
                mine += sign * value
        self.scalars += sign * other.scalars

    @property
    def counts(self) -> IntArray:
        """Bin counts, one row per reference statistic."""
        return self.table[:, : self.width]

    @property
    def sums(self) -> FloatArray:
        """Sum of the values of each statistic."""
        if self.stale:
            raise RuntimeError("value sums are stale: resum() after remove()")
        return self.value_sums

    @property
    def ns(self) -> IntArray:
        """How many values of each statistic were counted."""
        return self.table[:, self.width]

    @property
    def latency(self) -> IntArray:
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
            self.total.remove(evicted)
            self.total.resum(self._entries.values())
        return True, evicted


class LatencyBaseline:
    """A device's own latency: its first windows, at least ``windows`` and ``min_samples``."""

    def __init__(self, windows: int, min_samples: int) -> None:
        self.windows = windows
        self.min_samples = min_samples
        self.latency = np.zeros(LATENCY_BINS, dtype=np.int64)
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
