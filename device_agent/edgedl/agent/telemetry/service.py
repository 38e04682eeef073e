"""Telemetry as one service: cut a window on a timer, encode it, spool it, publish it.

:class:`TelemetryService` ties the three parts together and is what ``edgedl agent serve``
starts when ``[telemetry] mqtt`` (or ``--mqtt``) is set:

* its :attr:`~TelemetryService.observer` (a :class:`WindowBuilder`) is registered with the
  served models and counts what they do;
* a thread cuts a window every ``interval_s`` seconds, or as soon as the window holds
  ``max_inferences_per_window`` inferences, encodes it (zstd or gzip) and commits it to the
  :class:`Spool` with the next sequence number; meanwhile it computes the statistics of the
  batches the builder buffered, so serving threads only copy and count;
* the :class:`Publisher` drains the spool to the broker.

Windows are sent even when nothing was served: an empty window is the device's heartbeat.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgedl._version import __version__
from edgedl.drift_notice import drift_topic
from edgedl.samples import samples_topic
from edgedl.telemetry import DeviceStatus, ModelRef, encode_window

from ..drift_state import DriftState
from .config import TelemetryConfig
from .publisher import Publisher
from .sampling import Sampler, SamplerMetrics, SamplingConfig
from .spool import Spool
from .window import UNKNOWN_SHA256, ModelInfo, ModelResolver, WindowBuilder

log = logging.getLogger("edgedl.agent.telemetry")


def resolver_for(repository: Any) -> ModelResolver:
    """A :data:`ModelResolver` over the agent's model repository (``get(name, version)``)."""

    def resolve(name: str, version: str) -> ModelInfo | None:
        try:
            served = repository.get(name, version)
        except Exception:
            return None
        manifest = served.manifest
        config = getattr(served, "config", None)
        return ModelInfo(
            name=name,
            version=version,
            sha256=manifest.sha256,
            reference=getattr(served, "reference", None) or manifest.reference_profile(),
            latency_threshold_ms=getattr(config, "latency_threshold_ms", None),
        )

    return resolve


def attach(runtime: Any, pipelines: Any = None) -> TelemetryService | None:
    """Wire telemetry into a running agent when ``[telemetry] mqtt`` is set; else None.

    ``runtime`` is the :class:`~edgedl.agent.service.AgentRuntime`: the window builder becomes
    one of its observers and the service one of its components (started and stopped with it).
    ``pipelines`` is the agent's :class:`~edgedl.agent.pipeline.pipeline_set.PipelineSet`:
    its ``window_figures()`` (stage statistics and per-window stage-health counters) go into
    every window and its outputs (detections, segments, transcripts) to ``/events``.
    """
    config: TelemetryConfig = runtime.config.telemetry
    sampling: SamplingConfig | None = getattr(runtime.config, "sampling", None)
    if not config.enabled:
        if sampling is not None and sampling.enabled:
            log.warning("[sampling] is on but telemetry is off: no sample is kept or sent")
        return None
    repository = runtime.repository

    def models() -> list[ModelRef]:
        return [
            ModelRef(name=m.name, version=m.version, sha256=m.manifest.sha256)
            for m in repository.models()
        ]

    service = TelemetryService(
        config,
        resolve=resolver_for(repository),
        pipelines=getattr(pipelines, "window_figures", None),
        models=models,
    )
    if pipelines is not None and hasattr(pipelines, "add_listener"):
        pipelines.add_listener(service.on_events)
    runtime.add_observer(service.observer)
    live = getattr(getattr(runtime, "metrics", None), "profiles", None)
    if live is not None:  # /metrics' live profile counts the statistics the windows compute
        live.take_statistics_from(service.builder)
    if getattr(runtime, "predictions", None) is not None:
        runtime.predictions.add_listener(service.builder)  # late labels into the windows
    if sampling is not None and sampling.enabled:
        sampler = service.sampler(sampling)
        runtime.sampler = sampler
        registry = getattr(getattr(runtime, "metrics", None), "registry", None)
        if registry is not None:
            registry.register(SamplerMetrics(sampler))
        if getattr(runtime, "predictions", None) is not None:
            runtime.predictions.add_id_listener(sampler.on_label)
    runtime.add_component(service)  # after the sampler: its subscriptions go with the connect
    return service


class TelemetryService:
    """Windows of telemetry from the serving path to the broker; :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        config: TelemetryConfig,
        resolve: ModelResolver | None = None,
        pipelines: Callable[[], Mapping[str, Any]] | None = None,
        models: Callable[[], list[ModelRef]] | None = None,
    ) -> None:
        self.config = config
        self.spool = Spool(config.spool_path, config.spool_max_bytes, config.spool_max_windows)
        self._wake = threading.Event()
        self.builder = WindowBuilder(
            config.fleet,
            config.device,
            resolve=resolve,
            pipelines=pipelines,
            sample_rate=config.sample_rate,
            max_samples=config.max_samples_per_window,
            max_inferences=config.max_inferences_per_window,
            on_full=self._window_full,
            on_pending=self._wake.set,
        )
        self._models = models
        self.publisher = Publisher(config, self.spool, self._status)
        self._cut_requested = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampler: Sampler | None = None
        self.windows = 0
        """Windows spooled since :meth:`start`."""

    def sampler(self, sampling: SamplingConfig) -> Sampler:
        """A :class:`Sampler` whose samples this service's publisher sends (started with it)."""
        path = sampling.spool_for(self.config.spool_path)
        spool = Spool(path, sampling.max_disk_bytes)
        drift = None
        if sampling.during_drift_rate > 0:
            drift = DriftState(self.config.device)
            self.publisher.subscribe(drift_topic(self.config.fleet, self.config.device),
                                     drift.on_notice)  # fmt: skip
        self._sampler = Sampler(
            sampling, spool, self.config.fleet, self.config.device, notify=self.publisher.notify,
            drift=drift,
        )  # fmt: skip
        self.publisher.add_spool(samples_topic(self.config.fleet, self.config.device), spool)
        if self._thread is not None:
            self._sampler.start()
        return self._sampler

    @property
    def observer(self) -> WindowBuilder:
        """The :class:`~edgedl.agent.observe.InferenceObserver` to register with the models."""
        return self.builder

    def start(self) -> None:
        """Start publishing (in the background) and the window timer."""
        if self._thread is not None:
            return
        self._stopping.clear()
        if self._sampler is not None:
            self._sampler.start()
        self.publisher.start()
        self._thread = threading.Thread(
            target=self._run, name="edgedl-telemetry-window", daemon=True
        )
        self._thread.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Spool the current window, send what the broker takes in ``flush_timeout_s``, stop.

        Whatever is not acknowledged by then stays in the spool for the next start.
        """
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join()
        self._thread = None
        self.flush()
        if self._sampler is not None:
            self._sampler.stop()
        self.publisher.stop(flush_timeout_s)
        self.spool.close()
        if self._sampler is not None:
            self._sampler.spool.close()

    def flush(self) -> int:
        """Cut the current window now and spool it; its sequence number."""

        def build(seq: int, dropped: int) -> bytes:
            window = self.builder.cut(
                seq=seq, dropped=dropped, pending=len(self.spool), epoch=self.spool.epoch
            )
            payload, _ = encode_window(window, self.config.compression)
            return payload

        seq = self.spool.enqueue(build)
        self.windows += 1
        self.publisher.notify()
        return seq

    def on_events(self, pipeline: str, events: list[Any]) -> None:
        """Publish a pipeline's outputs (detections, segments, transcripts) on ``/events``
        (a PipelineSet listener)."""
        message = {
            "schema_version": 1,
            "fleet": self.config.fleet,
            "device": self.config.device,
            "pipeline": pipeline,
            "time": time.time(),
            "events": [e.to_dict() if hasattr(e, "to_dict") else e for e in events],
        }
        self.publisher.publish_event(json.dumps(message, separators=(",", ":")).encode())

    def _window_full(self) -> None:
        self._cut_requested = True
        self._wake.set()

    def _run(self) -> None:
        """Fold buffered batches when asked; cut a window on time or when it is full."""
        interval = self.config.interval_s
        next_cut = time.monotonic() + interval
        while not self._stopping.is_set():
            self._wake.wait(max(0.0, next_cut - time.monotonic()))
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.builder.fold_pending()
                if self._cut_requested or time.monotonic() >= next_cut:
                    self._cut_requested = False
                    next_cut = time.monotonic() + interval
                    self.flush()
            except Exception:
                # A window may be lost, but serving and the next windows are not.
                log.exception("telemetry: could not spool a window")

    def _status(self, online: bool) -> DeviceStatus:
        if self._models is not None:
            models = self._models()
        else:
            models = [
                ModelRef(name=i.name, version=i.version, sha256=i.sha256)
                for i in self.builder.models()
                if i.sha256 != UNKNOWN_SHA256
            ]
        return DeviceStatus(
            fleet=self.config.fleet,
            device=self.config.device,
            epoch=self.spool.epoch,
            online=online,
            agent_version=__version__,
            models=models[:16],
            since=time.time(),
        )
