"""The live input/output profile of each served model version, binned off the request path.

A :class:`ProfileRecorder` keeps one :class:`~edgedl.profile.Profile` per model version,
started as ``reference.empty_like()`` from the bundle's reference profile, so live counts sit
on exactly the reference's bin edges (design 3.3). Batches are handed over by the metrics
observer and binned on the recorder's own thread. While telemetry runs, its window builder
computes every batch's per-sample statistics anyway; :meth:`ProfileRecorder.take_statistics_from`
makes the recorder count those instead of computing them a second time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from numpy.typing import NDArray

from edgedl.profile import Profile

from .repository import ModelRepository

log = logging.getLogger(__name__)

Array = NDArray[Any]


Item = tuple[str, str, Mapping[str, Array], Mapping[str, Array]]


class StatisticsSource(Protocol):
    """What computes batches' statistics for the recorder (the telemetry window builder)."""

    def add_statistics_listener(
        self, listener: Callable[[str, str, Mapping[str, Any], Mapping[str, Any], int], None]
    ) -> None:
        """Call ``listener(model, version, stats, classes, samples)`` for each batch."""

    def fold_pending(self) -> None:
        """Compute the statistics of every batch still waiting, now."""


class ProfileRecorder:
    """Bins batches into live profiles on its own thread, within a CPU budget.

    Binning may use at most ``max_cpu`` of one core: after a batch took ``t`` seconds to bin,
    batches arriving in the next ``t / max_cpu`` seconds are skipped (a sample of the
    traffic, which keeps the histograms' shares unbiased), and so are batches arriving while
    one is still waiting or being binned (otherwise a burst would queue up and be binned back
    to back, far over the budget). With ``max_cpu = 1`` every batch is queued, and only those
    that find the queue full are skipped. Both are counted in :attr:`skipped`.

    Handing a batch over never wakes the thread while traffic flows: waking a thread from a
    serving thread costs a system call with the GIL held, and on a busy machine the serving
    thread can lose its core to the woken one. So the recorder looks for batches every
    :attr:`poll_s` seconds after one arrived, and waits without a timeout once it finds none
    (an idle agent does not poll); only the first batch after such a pause wakes it.
    """

    poll_s = 0.05

    def __init__(
        self, repository: ModelRepository, max_cpu: float = 0.05, queue_size: int = 64
    ) -> None:
        self._repository = repository
        self.max_cpu = max_cpu
        self._next_at = 0.0
        self._pending = False  # a batch is queued or being binned (budgeted mode only)
        self._queue_size = queue_size
        self._items: deque[Item] = deque()  # append and popleft are atomic: no lock needed
        self._wake = threading.Event()
        self._sleeping = False  # the thread waits without a timeout: a new batch sets _wake
        self._binning = False
        self._done = threading.Condition()  # notified each time the thread runs dry
        self._stopping = False
        self._profiles: dict[tuple[str, str], Profile | None] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._source: StatisticsSource | None = None
        self.skipped = {"cpu_budget": 0, "queue_full": 0}

    def take_statistics_from(self, source: StatisticsSource) -> None:
        """Count the statistics ``source`` computes for every batch, instead of computing them.

        From then on :meth:`record` drops its batches: the same batches reach ``source``,
        which computes their statistics once for itself and for this recorder. No batch is
        skipped for the CPU budget, since counting precomputed statistics costs next to
        nothing; the live profile lags by the batches ``source`` still holds (at most one
        telemetry window), which :meth:`flush` folds.
        """
        self._source = source
        source.add_statistics_listener(self.add_statistics)

    def add_statistics(
        self,
        model: str,
        version: str,
        stats: Mapping[str, Any],
        classes: Mapping[str, Any],
        samples: int,
    ) -> None:
        """Count one batch's precomputed per-sample statistics into its live profile."""
        with self._lock:
            live = self._live(model, version)
            if live is not None:
                live.add_statistics(stats, classes, samples)

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="edgedl-profile", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Bin what is queued, then stop the thread."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None

    def record(
        self, model: str, version: str, inputs: Mapping[str, Array], outputs: Mapping[str, Array]
    ) -> None:
        """Queue one batch for binning (never blocks; a no-op once a source computes them)."""
        if self._source is not None:
            return
        budgeted = self.max_cpu < 1.0
        if budgeted and (self._pending or (self._next_at and time.monotonic() < self._next_at)):
            self.skipped["cpu_budget"] += 1
            return
        if len(self._items) >= self._queue_size:
            self.skipped["queue_full"] += 1
            return
        if budgeted:
            self._pending = True
        self._items.append((model, version, inputs, outputs))
        if self._sleeping:  # read after the append: see _work for why no batch is missed
            self._wake.set()

    def flush(self) -> None:
        """Wait until every queued batch is binned (for tests and shutdown)."""
        if self._source is not None:
            self._source.fold_pending()
        with self._done:
            while (self._items or self._binning) and self._thread is not None:
                self._wake.set()
                self._done.wait(self.poll_s)

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
            if not self._items:
                with self._done:
                    self._done.notify_all()
                if self._stopping:
                    return
                # Set before looking at the queue once more: a batch appended after this
                # look finds _sleeping set and sets _wake, one appended before it is seen.
                self._sleeping = True
                if not self._items and not self._stopping:
                    self._wake.wait()
                self._sleeping = False
                self._wake.clear()
            while self._items:
                self._binning = True
                self._bin(self._items.popleft())
                self._binning = False
            if not self._stopping:
                self._wake.wait(self.poll_s)  # batches arriving meanwhile wait for the next look
                self._wake.clear()

    def _bin(self, item: Item) -> None:
        try:
            model, version, inputs, outputs = item
            started = time.monotonic()
            with self._lock:
                live = self._live(model, version)
                if live is not None:
                    live.observe(inputs, outputs)
            if self.max_cpu < 1.0:
                took = time.monotonic() - started
                self._next_at = started + took / self.max_cpu
        except Exception:
            log.exception("could not bin a batch into the live profile")
        finally:
            self._pending = False

    def _live(self, model: str, version: str) -> Profile | None:
        """The live profile of a model version, started on first use (the lock is held)."""
        key = (model, version)
        if key not in self._profiles:
            self._profiles[key] = self._start_profile(model, version)
        return self._profiles[key]

    def _start_profile(self, model: str, version: str) -> Profile | None:
        try:
            reference = self._repository.get(model, version).reference
        except Exception:
            return None
        return reference.empty_like() if reference is not None else None
