"""Per-stage counters: what a stage received and passed on, and how long it took."""

from __future__ import annotations

import threading
from typing import Any

# Upper bounds (ms) of the latency histogram's buckets; the last bucket is open-ended.
LATENCY_BUCKETS_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)


class LatencyHistogram:
    """Count, sum, max and a fixed-bucket histogram of durations, in milliseconds.

    Fixed buckets make histograms from many devices summable into a fleet histogram.
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)

    def observe(self, ms: float) -> None:
        """Add one duration."""
        self.count += 1
        self.sum_ms += ms
        self.max_ms = max(self.max_ms, ms)
        for i, bound in enumerate(LATENCY_BUCKETS_MS):
            if ms <= bound:
                self.buckets[i] += 1
                return
        self.buckets[-1] += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: count, sum, mean, max and cumulative-free bucket counts keyed by bound."""
        labels = [f"{b:g}" for b in LATENCY_BUCKETS_MS] + ["+Inf"]
        return {
            "count": self.count,
            "sum": round(self.sum_ms, 4),
            "mean": round(self.sum_ms / self.count, 4) if self.count else 0.0,
            "max": round(self.max_ms, 4),
            "buckets": dict(zip(labels, self.buckets, strict=True)),
        }


class StageStats:
    """What one stage received and passed on (in its units), and its latency per call."""

    def __init__(self, unit_in: str, unit_out: str) -> None:
        self.unit_in = unit_in
        self.unit_out = unit_out
        self.received = 0
        self.passed = 0
        self.latency = LatencyHistogram()
        self._lock = threading.Lock()

    def record(self, received: int, passed: int, seconds: float) -> None:
        """One call of the stage: ``received`` units in, ``passed`` out, in ``seconds``."""
        with self._lock:
            self.received += received
            self.passed += passed
            self.latency.observe(seconds * 1000.0)

    def to_dict(self) -> dict[str, Any]:
        """``{"received", "passed", "unit_in", "unit_out", "latency_ms": {...}}``."""
        with self._lock:
            return {
                "received": self.received,
                "passed": self.passed,
                "unit_in": self.unit_in,
                "unit_out": self.unit_out,
                "latency_ms": self.latency.to_dict(),
            }
