"""The telemetry window: what the serving path did since the last cut, as counts and histograms.

:class:`WindowBuilder` is an :class:`~edgedl.agent.observe.InferenceObserver`. Per served
model version it keeps request/inference/error/rejection counts, latency and batch-size
histograms on the contract's fixed edges, and the input/output profile on the edges of the
bundle's reference profile. Its size depends on the number of models and bins, never on the
number of inferences. :meth:`WindowBuilder.cut` swaps in a fresh window under the lock and
turns the finished one into a :class:`~edgedl.telemetry.TelemetryWindow` outside it.

Hot path: latency and batch size are binned with :func:`bisect.bisect_right` on Python lists
(a few hundred nanoseconds). A batch's tensors are copied and buffered; every
:data:`STATISTICS_BATCH` samples (and at the cut) their per-sample statistics are computed in
one NumPy pass outside the lock, which costs a few microseconds per sample instead of the
~150 µs a call on one sample costs (bench/telemetry.py, ``agent_cpu``). With ``on_pending``
(as :class:`~.service.TelemetryService` uses it) that pass runs on the telemetry thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edgedl._version import __version__
from edgedl.profile import FloatArray, batch_statistics
from edgedl.telemetry import (
    MAX_LABEL_IDS,
    MAX_MODELS,
    MAX_SAMPLES,
    WINDOW_SCHEMA_VERSION,
    SpoolFigures,
    TelemetryWindow,
)

from ..observe import Tensors
from .accumulators import (
    Batch,
    ModelAccumulator,
    ModelInfo,
    ModelResolver,
    WindowState,
    copy_tensors,
    joined,
)
from .system import pipeline_figures, system_figures

#: Called with a batch's per-sample statistics once computed:
#: ``(model, version, {key: values}, {key: predicted classes}, samples)``.
StatisticsListener = Callable[[str, str, Mapping[str, FloatArray], Mapping[str, Any], int], None]

UNKNOWN_SHA256 = "0" * 64
#: Samples buffered per model before their statistics are computed in one NumPy pass.
STATISTICS_BATCH = 64
_BACKLOG_FACTOR = 8  # buffered samples (in STATISTICS_BATCH) before a serving thread folds

log = logging.getLogger("edgedl.agent.telemetry")


class WindowBuilder:
    """Accumulates serving events into the current window; :meth:`cut` hands it over.

    ``sample_rate`` (0 = off) keeps that share of inferences as raw records: the per-sample
    statistics and the prediction, never the input tensors. At most ``max_samples`` per window.
    ``on_full`` is called (outside the lock) once the window holds ``max_inferences``.
    ``on_pending`` is called when :data:`STATISTICS_BATCH` samples wait for their statistics:
    whoever gets it should call :meth:`fold_pending` on its own thread, so the NumPy pass stays
    off the serving threads. Without it (or when it falls far behind) a serving thread folds.
    """

    def __init__(
        self,
        fleet: str,
        device: str,
        resolve: ModelResolver | None = None,
        pipelines: Callable[[], Mapping[str, Any]] | None = None,
        sample_rate: float = 0.0,
        max_samples: int = 16,
        max_inferences: int | None = None,
        on_full: Callable[[], None] | None = None,
        on_pending: Callable[[], None] | None = None,
    ) -> None:
        self.fleet = fleet
        self.device = device
        self._resolve = resolve
        self._pipelines = pipelines
        self._sample_rate = sample_rate
        self._max_samples = min(max_samples, MAX_SAMPLES)
        self._max_inferences = max_inferences
        self._on_full = on_full
        self._on_pending = on_pending
        self._known: dict[tuple[str, str], ModelInfo] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._window = WindowState(start=time.time())
        self._random = random.Random()
        self._statistics_listeners: list[StatisticsListener] = []

    def add_statistics_listener(self, listener: StatisticsListener) -> None:
        """Hand each batch's per-sample statistics to ``listener`` too, once computed.

        Called on the thread that computed them, outside the lock, once per batch the window
        profiled (model versions with a reference profile, or all while ``sample_rate`` is on).
        The agent's live profile for /metrics takes its statistics from here while telemetry
        runs, so no batch's statistics are computed twice.
        """
        self._statistics_listeners.append(listener)

    def register(self, info: ModelInfo) -> None:
        """Tell the builder about a model version (its sha256, reference profile, threshold)."""
        with self._lock:
            self._known[(info.name, info.version)] = info

    def models(self) -> list[ModelInfo]:
        """The model versions the builder knows, by name and version."""
        with self._lock:
            return sorted(self._known.values(), key=lambda i: (i.name, i.version))

    # ------------------------------------------------------------ InferenceObserver

    def on_request(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """Count a finished request; a successful one also goes into the latency histogram."""
        ms = latency_s * 1000.0
        with self._lock:
            acc = self._model(model, version)
            if acc is None:
                return
            acc.counts.requests += 1
            if ok:
                acc.latency.add(ms)
                limit = acc.info.latency_threshold_ms
                if limit is not None and ms > limit:
                    acc.counts.latency_violations += 1

    def on_batch(
        self,
        model: str,
        version: str,
        batch_size: int,
        latency_s: float,
        inputs: Tensors,
        outputs: Tensors,
    ) -> None:
        """Count a batch's inferences and size; keep its tensors for the profile.

        The per-sample statistics are computed for :data:`STATISTICS_BATCH` samples at a
        time (or at the cut): NumPy's cost per call dwarfs its cost per sample at batch 1.
        """
        info = self._known.get((model, version))
        if info is None:
            with self._lock:
                self._model(model, version)  # resolves and remembers the model version
            info = self._known.get((model, version))
        keep = (info is not None and info.reference is not None) or self._sample_rate > 0
        # Copies: the runtime may reuse its buffers once this call returns.
        kept = (copy_tensors(inputs), copy_tensors(outputs)) if keep else None
        todo: list[Batch] = []
        ask = False
        with self._lock:
            acc = self._model(model, version)
            if acc is None:
                return
            acc.counts.inferences += batch_size
            acc.batch_size.add(float(batch_size))
            window = self._window
            window.inferences += batch_size
            if kept is not None:
                acc.pending.append(kept)
                acc.pending_samples += batch_size
                if acc.pending_samples >= STATISTICS_BATCH * (
                    1 if self._on_pending is None else _BACKLOG_FACTOR
                ):
                    todo = acc.take_pending()  # nobody else folds, or they fall behind
                else:
                    ask = self._on_pending is not None and acc.pending_samples >= STATISTICS_BATCH
            full = self._max_inferences is not None and window.inferences >= self._max_inferences
        if todo:
            self._fold(window, acc, todo)
        elif ask and self._on_pending is not None:
            self._on_pending()
        if full and self._on_full is not None:
            self._on_full()

    def fold_pending(self) -> None:
        """Compute the statistics of every buffered batch now (the telemetry thread calls it)."""
        with self._lock:
            window = self._window
            work = [(a, a.take_pending()) for a in window.models.values() if a.pending]
        for acc, batches in work:
            self._fold(window, acc, batches)

    def _fold(self, window: WindowState, acc: ModelAccumulator, batches: list[Batch]) -> None:
        """Statistics of buffered batches into their window's profile and samples.

        Computed outside the lock; ``acc.busy`` tells :meth:`cut` to wait for the additions.
        """
        results: list[tuple[dict[str, FloatArray], dict[str, Any], int]] = []
        try:
            projections = acc.profile.projections if acc.profile is not None else None
            for inputs, outputs in joined(batches):
                stats, classes = batch_statistics(inputs, outputs, projections)
                n = int(next(iter(inputs.values())).shape[0]) if inputs else 0
                results.append((stats, classes, n))
        except Exception:
            log.exception("telemetry: could not profile a batch of %s", acc.info.name)
        with self._lock:
            try:
                for stats, classes, n in results:
                    if acc.profile is not None:
                        acc.profile.add_statistics(stats, classes, n)
                    if self._sample_rate > 0:
                        self._sample(window, acc.info.name, acc.info.version, n, stats, classes)
            finally:
                acc.busy -= 1
                self._idle.notify_all()
        for listener in self._statistics_listeners:
            for stats, classes, n in results:
                try:
                    listener(acc.info.name, acc.info.version, stats, classes, n)
                except Exception:
                    log.exception("telemetry: a statistics listener failed")

    def on_error(self, model: str, version: str, kind: str) -> None:
        """Count a failed request."""
        with self._lock:
            acc = self._model(model, version)
            if acc is not None:
                acc.counts.errors += 1

    def on_rejected(self, model: str, version: str, reason: str) -> None:
        """Count a request turned away before it ran."""
        with self._lock:
            acc = self._model(model, version)
            if acc is not None:
                acc.counts.rejected += 1

    def on_queue_depth(self, model: str, depth: int) -> None:
        """Queue depth is a Prometheus gauge, not a window figure."""

    # ------------------------------------------------------------ LabelListener

    def on_label(
        self,
        status: str,
        model: str | None,
        version: str | None,
        pairs: Sequence[tuple[int, int]],
        replaced: bool,
        request_id: str | None = None,
    ) -> None:
        """Count a late label's outcome; an accepted one goes into its version's confusion,
        and the digest of its ``request_id`` into the version's ``labels.ids``. A version
        holding half of :data:`MAX_LABEL_IDS` digests asks for the window to be cut."""
        full = False
        with self._lock:
            counts = self._window.labels
            counts["received"] = counts.get("received", 0) + 1
            outcome = "matched" if status == "accepted" else str(status)
            counts[outcome] = counts.get(outcome, 0) + 1
            if status != "accepted" or model is None or version is None:
                return
            if replaced:
                counts["replaced"] = counts.get("replaced", 0) + 1
            acc = self._model(model, version)
            if acc is not None:
                acc.add_labels(list(pairs))
                if request_id is not None:
                    acc.add_label_id(request_id)
                    full = len(acc.label_ids) == MAX_LABEL_IDS // 2
        if full and self._on_full is not None:
            self._on_full()

    # ------------------------------------------------------------ the window

    @property
    def inferences(self) -> int:
        """Inferences in the current window so far."""
        with self._lock:
            return self._window.inferences

    def cut(
        self, seq: int = 0, dropped: int = 0, pending: int = 0, epoch: str = ""
    ) -> TelemetryWindow:
        """Close the current window, start a fresh one, and return the closed one.

        ``seq`` is the window's sequence number within the spool's ``epoch``; ``dropped`` and
        ``pending`` describe the spool.
        """
        now = time.time()
        with self._lock:
            finished, self._window = self._window, WindowState(start=now)
            accs = list(finished.models.values())
            # Serving threads may still be adding to the finished window: wait for them.
            self._idle.wait_for(lambda: all(a.busy == 0 for a in accs), timeout=10)
            leftovers = [(a, a.take_pending()) for a in accs if a.pending]
        for acc, batches in leftovers:
            self._fold(finished, acc, batches)
        models = sorted(finished.models.values(), key=lambda a: (a.info.name, a.info.version))
        model_windows = [acc.to_window() for acc in models]
        labels = finished.label_counts()
        labelled = labels is not None or any(m.labels is not None for m in model_windows)
        return TelemetryWindow(
            # Version 1 unless the window carries labels: collectors that read only 1 keep
            # taking the windows of an agent that receives no labels.
            schema_version=WINDOW_SCHEMA_VERSION if labelled else 1,
            fleet=self.fleet,
            device=self.device,
            epoch=epoch,
            seq=seq,
            window_start=finished.start,
            window_end=max(now, finished.start),
            agent_version=__version__,
            models=model_windows,
            system=system_figures(),
            pipelines=pipeline_figures(self._pipelines() if self._pipelines else {}),
            spool=SpoolFigures(pending=pending, dropped=dropped),
            samples=finished.samples or None,
            labels=labels,
        )

    def _model(self, name: str, version: str) -> ModelAccumulator | None:
        """The accumulator of a model version in the current window (call with the lock)."""
        key = (name, version)
        acc = self._window.models.get(key)
        if acc is not None:
            return acc
        info = self._known.get(key)
        if info is None and self._resolve is not None:
            info = self._resolve(name, version)
            if info is not None:
                self._known[key] = info
        if info is None:
            info = ModelInfo(name, version, UNKNOWN_SHA256)
            self._known[key] = info
        if len(self._window.models) >= MAX_MODELS:
            return None  # more versions than a window may carry: the rest are not counted
        acc = ModelAccumulator(info)
        self._window.models[key] = acc
        return acc

    def _sample(
        self,
        window: WindowState,
        model: str,
        version: str,
        batch_size: int,
        stats: Mapping[str, FloatArray],
        classes: Mapping[str, Any],
    ) -> None:
        room = self._max_samples - len(window.samples)
        if room <= 0:
            return
        rng = self._random
        picked = [i for i in range(batch_size) if rng.random() < self._sample_rate][:room]
        now = time.time()
        for i in picked:
            record: dict[str, Any] = {"model": model, "version": version, "time": now}
            for key, values in stats.items():
                v = float(values[i])
                if np.isfinite(v):
                    record[key] = v
            for key, predicted in classes.items():
                record[f"{key}/class"] = int(predicted[i])
            window.samples.append(record)


__all__ = ["STATISTICS_BATCH", "UNKNOWN_SHA256", "ModelInfo", "ModelResolver", "WindowBuilder"]
