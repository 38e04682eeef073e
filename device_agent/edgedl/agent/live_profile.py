"""The live input/output profile of each served model version, binned off the request path.

A :class:`ProfileRecorder` keeps one :class:`~edgedl.profile.Profile` per model version,
started as ``reference.empty_like()`` from the bundle's reference profile, so live counts sit
on exactly the reference's bin edges (design 3.3). Batches are handed over by the metrics
observer and binned on the recorder's own thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from numpy.typing import NDArray

from edgedl.profile import Profile

from .repository import ModelRepository

log = logging.getLogger(__name__)

Array = NDArray[Any]


class ProfileRecorder:
    """Bins batches into live profiles on its own thread, within a CPU budget.

    Binning may use at most ``max_cpu`` of one core: after a batch took ``t`` seconds to bin,
    batches arriving in the next ``t / max_cpu`` seconds are skipped (a sample of the
    traffic, which keeps the histograms' shares unbiased), and so are batches that find the
    queue full. Both are counted in :attr:`skipped`.
    """

    def __init__(
        self, repository: ModelRepository, max_cpu: float = 0.05, queue_size: int = 64
    ) -> None:
        self._repository = repository
        self.max_cpu = max_cpu
        self._next_at = 0.0
        self._queue: queue.Queue[tuple[str, str, Mapping[str, Array], Mapping[str, Array]] | None]
        self._queue = queue.Queue(maxsize=queue_size)
        self._profiles: dict[tuple[str, str], Profile | None] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.skipped = {"cpu_budget": 0, "queue_full": 0}

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgedl-profile", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Bin what is queued, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def record(
        self, model: str, version: str, inputs: Mapping[str, Array], outputs: Mapping[str, Array]
    ) -> None:
        """Queue one batch for binning (never blocks)."""
        if self._next_at and time.monotonic() < self._next_at:
            self.skipped["cpu_budget"] += 1
            return
        try:
            self._queue.put_nowait((model, version, inputs, outputs))
        except queue.Full:
            self.skipped["queue_full"] += 1

    def flush(self) -> None:
        """Wait until every queued batch is binned (for tests and shutdown)."""
        self._queue.join()

    def profile(self, model: str, version: str) -> Profile | None:
        """A copy of the live profile of ``model`` ``version`` (None without a reference)."""
        with self._lock:
            live = self._profiles.get((model, version))
            return Profile.from_dict(live.to_dict()) if live is not None else None

    def profiles(self) -> dict[tuple[str, str], Profile]:
        """Copies of every live profile."""
        with self._lock:
            return {
                k: Profile.from_dict(p.to_dict())
                for k, p in self._profiles.items()
                if p is not None
            }

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                model, version, inputs, outputs = item
                key = (model, version)
                started = time.monotonic()
                with self._lock:
                    if key not in self._profiles:
                        self._profiles[key] = self._start_profile(model, version)
                    live = self._profiles[key]
                    if live is not None:
                        live.observe(inputs, outputs)
                if self.max_cpu < 1.0:
                    took = time.monotonic() - started
                    self._next_at = started + took / self.max_cpu
            except Exception:
                log.exception("could not bin a batch into the live profile")
            finally:
                self._queue.task_done()

    def _start_profile(self, model: str, version: str) -> Profile | None:
        try:
            reference = self._repository.get(model, version).reference
        except Exception:
            return None
        return reference.empty_like() if reference is not None else None
