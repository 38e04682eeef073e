"""What the serving path reports as it works, for whoever watches it.

The serving code (batcher, served models, pipelines) calls an :class:`InferenceObserver` at a
few points; Prometheus metrics and telemetry windows are two observers of the same events, so
neither needs to know about the other and the request path does the bookkeeping once.
Observers are called on the serving thread: they must be cheap and must not raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

Tensors = Mapping[str, NDArray[np.generic]]


class InferenceObserver(Protocol):
    """Receives the serving events of every model the agent runs."""

    def on_request(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """One client request finished (``ok`` False for any 4xx/5xx), end to end."""

    def on_batch(
        self,
        model: str,
        version: str,
        batch_size: int,
        latency_s: float,
        inputs: Tensors,
        outputs: Tensors,
    ) -> None:
        """One batch ran through the interpreter: float inputs and dequantized outputs."""

    def on_error(self, model: str, version: str, kind: str) -> None:
        """A request failed: ``kind`` is ``"bad_input"``, ``"inference"``, ``"timeout"``..."""

    def on_rejected(self, model: str, version: str, reason: str) -> None:
        """A request was turned away before running (``"queue_full"``, ``"shutting_down"``)."""

    def on_queue_depth(self, model: str, depth: int) -> None:
        """The batcher's queue depth changed."""
