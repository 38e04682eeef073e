"""Sliding windows of telemetry, summed on the reference profile's bins.

A :class:`Contribution` is one model window's figures laid out on a reference's rows, so
sums are plain array additions. A :class:`SlidingWindow` keeps the newest ``capacity``
contributions of one device (by ``seq``) and their running total; the fleet total of a model
version is the sum of its devices' totals, kept by adding what a device adds and subtracting
what it evicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from edgedl.telemetry import LATENCY_EDGES_MS, ModelWindow

from .references import ReferenceModel

LATENCY_BINS = len(LATENCY_EDGES_MS) + 1


@dataclass
class Contribution:
    """Figures of one or more model windows on a reference's rows (summable)."""

    counts: NDArray[np.float64]
    sums: NDArray[np.float64]
    ns: NDArray[np.float64]
    classes: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    latency: NDArray[np.float64] = field(default_factory=lambda: np.zeros(LATENCY_BINS))
    requests: int = 0
    errors: int = 0
    inferences: int = 0
    samples: int = 0
    seq: int = -1

    @classmethod
    def empty(cls, reference: ReferenceModel | None) -> Contribution:
        """Nothing counted, shaped for ``reference`` (or for latency only when None)."""
        rows = len(reference.stats) if reference else 0
        width = reference.width if reference else 0
        return cls(
            counts=np.zeros((rows, width)),
            sums=np.zeros(rows),
            ns=np.zeros(rows),
            classes={k: np.zeros_like(v) for k, v in reference.class_counts.items()}
            if reference
            else {},
        )

    @classmethod
    def from_window(
        cls, seq: int, model: ModelWindow, reference: ReferenceModel | None
    ) -> tuple[Contribution, int]:
        """A model window on ``reference``'s rows; also how many histograms did not fit."""
        c = cls.empty(reference)
        c.seq = seq
        c.latency = np.asarray(model.latency_ms.counts, dtype=np.float64)
        c.requests = model.counts.requests
        c.errors = model.counts.errors
        c.inferences = model.counts.inferences
        mismatched = 0
        profile = model.profile
        if reference is not None and profile is not None:
            c.samples = profile.samples
            for i, (stat, edges) in enumerate(zip(reference.stats, reference.edges, strict=True)):
                hist = profile.histograms.get(stat)
                if hist is None:
                    continue
                if tuple(hist.edges) != edges:
                    mismatched += 1
                    continue
                c.counts[i, : len(hist.counts)] = hist.counts
                c.sums[i] = hist.sum
                c.ns[i] = hist.count
            for key, ref_counts in reference.class_counts.items():
                live = profile.class_counts.get(key)
                if live is not None and len(live) == ref_counts.size:
                    c.classes[key] = np.asarray(live, dtype=np.float64)
                elif live is not None:
                    mismatched += 1
        return c, mismatched

    def add(self, other: Contribution, sign: float = 1.0) -> None:
        """Add (or with ``sign=-1`` subtract) another contribution in place."""
        if other.counts.shape == self.counts.shape:
            self.counts += sign * other.counts
            self.sums += sign * other.sums
            self.ns += sign * other.ns
        for key, value in other.classes.items():
            mine = self.classes.get(key)
            if mine is not None and mine.shape == value.shape:
                mine += sign * value
        self.latency += sign * other.latency
        self.requests += int(sign * other.requests)
        self.errors += int(sign * other.errors)
        self.inferences += int(sign * other.inferences)
        self.samples += int(sign * other.samples)


class SlidingWindow:
    """The newest ``capacity`` contributions of one device and model version, and their sum."""

    def __init__(self, capacity: int, reference: ReferenceModel | None) -> None:
        self.capacity = capacity
        self.reference = reference
        self.total = Contribution.empty(reference)
        self._entries: dict[int, Contribution] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, c: Contribution) -> tuple[bool, Contribution | None]:
        """Take a contribution: ``(taken, evicted)``. Old or repeated seqs are not taken."""
        if c.seq in self._entries:
            return False, None
        if len(self._entries) >= self.capacity and c.seq < min(self._entries):
            return False, None
        self._entries[c.seq] = c
        self.total.add(c)
        evicted = None
        if len(self._entries) > self.capacity:
            evicted = self._entries.pop(min(self._entries))
            self.total.add(evicted, -1.0)
        return True, evicted


class LatencyBaseline:
    """A device's own latency: its first windows, at least ``windows`` and ``min_samples``."""

    def __init__(self, windows: int, min_samples: int) -> None:
        self.windows = windows
        self.min_samples = min_samples
        self.latency = np.zeros(LATENCY_BINS)
        self._seqs: set[int] = set()

    @property
    def complete(self) -> bool:
        """Whether the baseline is fixed."""
        return len(self._seqs) >= self.windows and self.latency.sum() >= self.min_samples

    def add(self, c: Contribution) -> None:
        """Count a window into the baseline while it is still being built."""
        if self.complete or c.seq in self._seqs:
            return
        self._seqs.add(c.seq)
        self.latency += c.latency
