"""Prometheus metrics of the serving path, and live input/output profiles per model.

:class:`AgentMetrics` is an :class:`~edgedl.agent.observe.InferenceObserver` with its own
``CollectorRegistry`` (so tests and several agents in one process do not collide). It keeps:

* ``edgedl_requests_total``, ``edgedl_request_errors_total{kind}``,
  ``edgedl_requests_rejected_total{reason}``, ``edgedl_inferences_total`` (samples run);
* ``edgedl_request_latency_seconds`` (histogram) and
  ``edgedl_request_latency_recent_seconds{quantile="0.5|0.95|0.99"}`` over the last
  :data:`RECENT` requests, ``edgedl_latency_threshold_violations_total`` (requests slower
  than the model's ``latency_threshold_ms``);
* ``edgedl_batch_size`` and ``edgedl_batch_latency_seconds`` (histograms),
  ``edgedl_queue_depth``;
* ``edgedl_process_cpu_percent``, ``edgedl_process_memory_rss_bytes``,
  ``edgedl_system_memory_used_percent`` (psutil) and the standard ``process_*`` metrics;
* per model version, a live :class:`~edgedl.profile.Profile` on the bundle's reference-profile
  edges (``reference.empty_like()``), exported as ``edgedl_profile_samples_total``,
  ``edgedl_predicted_class_total{output,label}`` and ``edgedl_input_nonfinite_values_total``.
  Binning a batch costs about a millisecond for a 224x224x3 image, so it runs on a
  background thread (:class:`ProfileRecorder`), never on the request path, and within a CPU
  budget (``server.profile_max_cpu`` of one core); the batches it leaves out are counted
  (``edgedl_profile_skipped_batches_total{reason}``). While telemetry runs, the recorder
  counts the statistics its windows compute instead: every batch, computed once for both.
  :meth:`AgentMetrics.profile` returns a copy.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client import (
    CollectorRegistry,
    Counter,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from edgedl.profile import Profile

from .live_profile import ProfileRecorder
from .repository import ModelRepository

log = logging.getLogger(__name__)

RECENT = 2048
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Array = NDArray[Any]


class _Tally:
    """A histogram's bucket counts and sum (the caller holds the series lock)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, value: float) -> None:
        # bucket i counts values <= bounds[i], as Prometheus' `le`
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]
        return out


@dataclass
class _ModelSeries:
    """The request-path figures of one model version: plain numbers under one lock.

    prometheus_client's labelled children take a lock and a few Python calls per update
    (several microseconds per request, a share of a small model's whole cost); these are
    exported as the same metric families when /metrics is read.
    """

    threshold_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    inferences: int = 0
    violations: int = 0
    latency: _Tally = field(default_factory=lambda: _Tally(LATENCY_BUCKETS))
    batch_size: _Tally = field(default_factory=lambda: _Tally(BATCH_BUCKETS))
    batch_latency: _Tally = field(default_factory=lambda: _Tally(LATENCY_BUCKETS))
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))


class AgentMetrics:
    """The Prometheus side of the agent: an observer plus scrape-time collectors."""

    def __init__(
        self,
        repository: ModelRepository,
        default_threshold_ms: float = 100.0,
        profile_max_cpu: float = 0.05,
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double the text on a device
        self.registry = CollectorRegistry()
        self.repository = repository
        self.default_threshold_s = default_threshold_ms / 1000.0
        self.profiles = ProfileRecorder(repository, max_cpu=profile_max_cpu)
        labels = ("model", "version")
        reg = self.registry
        self._errors = Counter(
            "edgedl_request_errors", "Requests failed, by kind.", (*labels, "kind"), registry=reg
        )
        self._rejected = Counter(
            "edgedl_requests_rejected",
            "Requests turned away before running, by reason.",
            (*labels, "reason"),
            registry=reg,
        )
        self._series: dict[tuple[str, str], _ModelSeries] = {}
        self._depths: dict[str, int] = {}  # model -> requests waiting (edgedl_queue_depth)
        self._series_lock = threading.Lock()
        self._thresholds: dict[str, float] = {}
        ProcessCollector(registry=reg)
        reg.register(_ScrapeCollector(self))

    def set_latency_threshold(self, model: str, threshold_ms: float) -> None:
        """Count requests of ``model`` slower than ``threshold_ms`` as violations."""
        self._thresholds[model] = threshold_ms / 1000.0

    def start(self) -> None:
        """Start the live-profile thread."""
        self.profiles.start()

    def stop(self) -> None:
        """Bin what is queued and stop the live-profile thread."""
        self.profiles.stop()

    def profile(self, model: str, version: str) -> Profile | None:
        """A copy of the live input/output profile of a model version, since the agent started."""
        return self.profiles.profile(model, version)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of everything."""
        return generate_latest(self.registry)

    def _model(self, model: str, version: str) -> _ModelSeries:
        key = (model, version)
        series = self._series.get(key)
        if series is None:
            with self._series_lock:
                series = self._series.get(key)
                if series is None:
                    series = _ModelSeries(
                        threshold_s=self._thresholds.get(model, self.default_threshold_s)
                    )
                    self._series[key] = series
        return series

    # InferenceObserver

    def on_request(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """Count a finished request and its latency."""
        s = self._series.get((model, version)) or self._model(model, version)
        with s.lock:
            s.requests += 1
            s.latency.add(latency_s)
            if latency_s > s.threshold_s:
                s.violations += 1
        s.recent.append(latency_s)

    def on_batch(
        self,
        model: str,
        version: str,
        batch_size: int,
        latency_s: float,
        inputs: Mapping[str, Array],
        outputs: Mapping[str, Array],
    ) -> None:
        """Count a batch; hand its tensors to the live profile."""
        s = self._series.get((model, version)) or self._model(model, version)
        with s.lock:
            s.inferences += batch_size
            s.batch_size.add(batch_size)
            s.batch_latency.add(latency_s)
        self.profiles.record(model, version, inputs, outputs)

    def on_error(self, model: str, version: str, kind: str) -> None:
        """Count a failed request by kind."""
        self._errors.labels(model, version, kind).inc()

    def on_rejected(self, model: str, version: str, reason: str) -> None:
        """Count a rejected request by reason."""
        self._rejected.labels(model, version, reason).inc()

    def on_queue_depth(self, model: str, depth: int) -> None:
        """Track the queue depth."""
        self._depths[model] = depth


class _ScrapeCollector(Collector):
    """Figures computed when /metrics is read: quantiles, system load, live profiles."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._metrics = metrics
        self._process: Any = None

    def collect(self) -> Iterator[Any]:
        yield from self._requests()
        m = self._metrics
        quantiles = GaugeMetricFamily(
            "edgedl_request_latency_recent_seconds",
            f"Latency quantiles over the last {RECENT} requests.",
            labels=["model", "version", "quantile"],
        )
        for (model, version), s in list(m._series.items()):
            recent = np.fromiter(list(s.recent), dtype=np.float64)
            if recent.size:
                for q in (0.5, 0.95, 0.99):
                    quantiles.add_metric([model, version, str(q)], float(np.quantile(recent, q)))
        yield quantiles
        yield from self._system()
        yield from self._profiles()

    def _requests(self) -> Iterator[Any]:
        m = self._metrics
        labels = ["model", "version"]
        requests = CounterMetricFamily("edgedl_requests", "Requests answered.", labels=labels)
        inferences = CounterMetricFamily(
            "edgedl_inferences", "Samples run through the model.", labels=labels
        )
        violations = CounterMetricFamily(
            "edgedl_latency_threshold_violations",
            "Requests slower than the model's latency_threshold_ms.",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "edgedl_request_latency_seconds", "End-to-end request latency.", labels=labels
        )
        batch_size = HistogramMetricFamily(
            "edgedl_batch_size", "Samples per batch run.", labels=labels
        )
        batch_latency = HistogramMetricFamily(
            "edgedl_batch_latency_seconds", "Time the interpreter took per batch.", labels=labels
        )
        for (model, version), s in list(m._series.items()):
            key = [model, version]
            with s.lock:
                requests.add_metric(key, float(s.requests))
                inferences.add_metric(key, float(s.inferences))
                violations.add_metric(key, float(s.violations))
                for family, tally in (
                    (latency, s.latency),
                    (batch_size, s.batch_size),
                    (batch_latency, s.batch_latency),
                ):
                    family.add_metric(key, tally.buckets(), tally.total)
        depth = GaugeMetricFamily("edgedl_queue_depth", "Requests waiting.", labels=["model"])
        for model, waiting in list(m._depths.items()):
            depth.add_metric([model], float(waiting))
        yield from (requests, inferences, latency, violations, batch_size, batch_latency, depth)

    def _system(self) -> Iterator[Any]:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only starts the measurement
        cpu = GaugeMetricFamily(
            "edgedl_process_cpu_percent", "CPU used by the agent since the last scrape (%)."
        )
        cpu.add_metric([], float(self._process.cpu_percent(None)))
        yield cpu
        rss = GaugeMetricFamily("edgedl_process_memory_rss_bytes", "Resident memory of the agent.")
        rss.add_metric([], float(self._process.memory_info().rss))
        yield rss
        mem = GaugeMetricFamily("edgedl_system_memory_used_percent", "Memory used on the device.")
        mem.add_metric([], float(psutil.virtual_memory().percent))
        yield mem

    def _profiles(self) -> Iterator[Any]:
        m = self._metrics
        samples = CounterMetricFamily(
            "edgedl_profile_samples",
            "Samples binned into the live profile.",
            labels=["model", "version"],
        )
        classes = CounterMetricFamily(
            "edgedl_predicted_class",
            "Predicted classes (top-1), from the live profile.",
            labels=["model", "version", "output", "label"],
        )
        nonfinite = CounterMetricFamily(
            "edgedl_input_nonfinite_values",
            'NaN/Inf input values accepted (nonfinite = "count").',
            labels=["model", "version"],
        )
        dropped = CounterMetricFamily(
            "edgedl_profile_skipped_batches",
            "Batches left out of the live profile (its CPU budget, or its queue full).",
            labels=["reason"],
        )
        for reason, count in m.profiles.skipped.items():
            dropped.add_metric([reason], float(count))
        labels_of = {(s.name, s.version): s.manifest.labels for s in m.repository.models()}
        for served in m.repository.models():
            nonfinite.add_metric([served.name, served.version], float(served.nonfinite_values))
        for (model, version), profile in m.profiles.profiles().items():
            samples.add_metric([model, version], float(profile.samples))
            names = labels_of.get((model, version))
            for key, counts in profile.class_counts.items():
                output = key.split("/", 1)[-1]
                for i, c in enumerate(counts):
                    label = names[i] if names and i < len(names) else str(i)
                    classes.add_metric([model, version, output, label], float(c))
        yield samples
        yield classes
        yield nonfinite
        yield dropped
