"""How a version is doing during a rollout: error rate and latency, and shadow agreement."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import Bounds

LATENCY_WINDOW = 1000


class VersionHealth:
    """Requests, errors and recent latencies of one version since its rollout started."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests = 0
        self.errors = 0
        self._latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def record(self, latency_s: float, ok: bool) -> None:
        """Count one finished request."""
        self.requests += 1
        if not ok:
            self.errors += 1
        self._latencies_ms.append(latency_s * 1000.0)

    @property
    def good(self) -> int:
        """Requests answered without error."""
        return self.requests - self.errors

    @property
    def error_rate(self) -> float:
        """Share of requests that failed (0 before any request)."""
        return self.errors / self.requests if self.requests else 0.0

    def latency_ms(self, q: float) -> float | None:
        """The ``q`` quantile (0-100) of recent latencies in ms, None before any request."""
        if not self._latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self._latencies_ms, dtype=np.float64), q))

    @property
    def elapsed_s(self) -> float:
        """Seconds since the rollout started."""
        return time.monotonic() - self.started

    def breach(self, bounds: Bounds, final: bool = False) -> str | None:
        """Why this version is out of bounds, or None when it is fine (or too early to say).

        Before ``min_requests`` nothing is judged, unless ``final`` (a probation ending).
        """
        if self.requests == 0 or (self.requests < bounds.min_requests and not final):
            return None
        if self.error_rate > bounds.max_error_rate:
            return (
                f"error rate {self.error_rate:.1%} ({self.errors}/{self.requests}) "
                f"above the bound {bounds.max_error_rate:.1%}"
            )
        p95 = self.latency_ms(95)
        if bounds.max_p95_ms is not None and p95 is not None and p95 > bounds.max_p95_ms:
            return f"p95 latency {p95:.1f} ms above the bound {bounds.max_p95_ms:g} ms"
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": _round(self.latency_ms(50)),
            "p95_ms": _round(self.latency_ms(95)),
            "elapsed_s": round(self.elapsed_s, 3),
        }


class ShadowComparison:
    """How a shadow candidate's outputs compare with the live model's on the same requests.

    For a classifier output (one row of scores per sample) the top-1 agreement is counted;
    for every output the largest absolute difference is kept.
    """

    def __init__(self) -> None:
        self.compared = 0
        self.samples = 0
        self.agreed = 0
        self.classified = 0
        self.max_abs_diff = 0.0
        self.candidate_errors = 0
        self.skipped = 0
        self.shape_mismatches = 0

    def add(self, live: Mapping[str, NDArray[Any]], candidate: Mapping[str, NDArray[Any]]) -> None:
        """Compare one request's outputs."""
        self.compared += 1
        pairs = [(live[k], candidate[k]) for k in live if k in candidate]
        if not pairs:  # renamed outputs: compare in order
            pairs = list(zip(live.values(), candidate.values(), strict=False))
        for a, b in pairs:
            a = np.asarray(a, dtype=np.float64)
            b = np.asarray(b, dtype=np.float64)
            if a.shape != b.shape:
                self.shape_mismatches += 1
                continue
            if a.size:
                self.max_abs_diff = max(self.max_abs_diff, float(np.max(np.abs(a - b))))
            if a.ndim == 2 and a.shape[1] > 1:
                self.classified += a.shape[0]
                self.agreed += int(np.sum(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        self.samples += next(iter(live.values())).shape[0] if live else 0

    @property
    def agreement(self) -> float | None:
        """Share of samples whose top-1 class agrees (None when no classifier output)."""
        return self.agreed / self.classified if self.classified else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "compared_requests": self.compared,
            "compared_samples": self.samples,
            "top1_agreement": _round(self.agreement),
            "max_abs_diff": _round(self.max_abs_diff),
            "candidate_errors": self.candidate_errors,
            "skipped": self.skipped,
            "shape_mismatches": self.shape_mismatches,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)
