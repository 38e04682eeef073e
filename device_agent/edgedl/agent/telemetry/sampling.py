"""Samples for retraining: the agent keeps a bounded share of real inputs and sends them on.

Off by default. With ``[sampling]`` on, every answered request is offered to the
:class:`Sampler` (:func:`offer`, called by the HTTP and gRPC APIs after the answer is made):

* a sample is *chosen* when its top-1 confidence is below ``low_confidence`` (reason
  ``low_confidence``); failing that, while the collector has an open drift alert for this
  device and the answering model version (:class:`~edgedl.agent.drift_state.DriftState`),
  with probability ``during_drift_rate`` (reason ``drift``); failing that, with probability
  ``rate`` (reason ``rate``);
* a chosen sample is *kept* only while this clock hour has kept fewer than ``max_per_hour``
  and its predicted class fewer than ``class_quota``; the others are counted as skipped;
* a kept sample is copied into a bounded in-memory queue (``queue_size``) and the request goes
  on: a full queue drops the sample and counts it. The serving thread never waits.

One background thread encodes queued samples (:class:`~edgedl.samples.SampleMessage`) into a
second :class:`~edgedl.agent.telemetry.spool.Spool` (``spool_path``), holding at most
``max_disk_bytes`` of payload: a sample that would take it over is dropped and counted, and the
next sample that is kept reports the drops. The telemetry publisher drains that spool to
``edgedl/v1/{fleet}/{device}/samples`` at QoS 1 and removes a sample only on the broker's
PUBACK, so a kept sample survives restarts and outages until the broker has it.

A true label that reaches the agent later (``POST /v2/labels``) for a request of which samples
were kept follows them as a :class:`~edgedl.samples.SampleLabel`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from edgedl.profile import predicted_classes, top1_confidence
from edgedl.samples import SampleLabel, SampleMessage, SampleTensor, encode_sample

from ..drift_state import DriftState
from .spool import Spool

log = logging.getLogger("edgedl.agent.telemetry.sampling")

#: Prediction ids whose kept samples are remembered for late labels.
MAX_LABELLABLE = 10_000


class SamplingConfig(BaseModel):
    """``[sampling]``: which inputs leave the device for retraining (none by default)."""

    model_config = ConfigDict(extra="forbid")
    rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of inferences kept at random (0: none)."""
    during_drift_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of inferences kept at random while the collector has an open drift alert for
    this device and the model version that answered (reason ``drift``; 0: none)."""
    low_confidence: float | None = Field(default=None, gt=0.0, le=1.0)
    """Keep every inference whose top-1 confidence is below this (unset: none)."""
    class_quota: int | None = Field(default=None, ge=1)
    """At most this many samples per predicted class per clock hour (unset: no quota)."""
    max_per_hour: int = Field(default=100, ge=1)
    """At most this many samples per clock hour, all reasons together."""
    max_disk_bytes: int = Field(default=10_000_000, ge=1000)
    """Payload bytes of samples waiting on disk for the broker; past it samples are dropped."""
    queue_size: int = Field(default=64, ge=1, le=100_000)
    """Samples waiting in memory to be written; past it samples are dropped."""
    spool_path: Path | None = None
    """The samples' spool file; default: beside the telemetry spool, ``*-samples.db``."""

    @property
    def enabled(self) -> bool:
        """Whether any sample can be chosen."""
        return self.rate > 0 or self.low_confidence is not None or self.during_drift_rate > 0

    def spool_for(self, telemetry_spool: Path) -> Path:
        """Where the samples' spool is, given the telemetry spool's path."""
        if self.spool_path is not None:
            return self.spool_path
        return telemetry_spool.with_name(f"{telemetry_spool.stem}-samples.db")


@dataclass
class SamplerCounts:
    """What the sampler did since it started."""

    offered: int = 0
    chosen: int = 0
    kept: int = 0
    written: int = 0
    skipped_hourly: int = 0
    skipped_quota: int = 0
    dropped_queue_full: int = 0
    dropped_disk_full: int = 0
    labels: int = 0


@dataclass(frozen=True)
class _Chosen:
    model: str
    version: str
    prediction_id: str | None
    index: int
    predicted: int | None
    confidence: float | None
    reason: str
    time: float
    inputs: dict[str, NDArray[Any]]


@dataclass(frozen=True)
class _Label:
    prediction_id: str
    labels: tuple[int, ...]


class Sampler:
    """Chooses samples on the serving path and spools them from its own thread."""

    def __init__(
        self,
        config: SamplingConfig,
        spool: Spool,
        fleet: str,
        device: str,
        notify: Any = None,
        clock: Any = time.time,
        rng: random.Random | None = None,
        drift: DriftState | None = None,
    ) -> None:
        self.config = config
        self.drift = drift
        """What the collector said of open drift alerts (with ``during_drift_rate``)."""
        self.spool = spool
        self.fleet = fleet
        self.device = device
        self._notify = notify
        self._clock = clock
        self._rng = rng or random.Random()
        self._queue: queue.Queue[_Chosen | _Label | None] = queue.Queue(config.queue_size)
        self._lock = threading.Lock()
        self._hour = -1
        self._hour_count = 0
        self._class_counts: Counter[int | None] = Counter()
        self._unreported_drops = 0
        self._by_prediction: OrderedDict[str, dict[int, str]] = OrderedDict()
        self.counts = SamplerCounts()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ the serving path

    def offer(
        self,
        model: str,
        version: str,
        prediction_id: str | None,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Mapping[str, NDArray[Any]],
    ) -> None:
        """Consider every sample of one answered request; never blocks, never raises."""
        try:
            self._offer(model, version, prediction_id, inputs, outputs)
        except Exception:
            log.exception("sampling: could not consider a request")

    def _offer(
        self,
        model: str,
        version: str,
        prediction_id: str | None,
        inputs: Mapping[str, NDArray[Any]],
        outputs: Mapping[str, NDArray[Any]],
    ) -> None:
        if not inputs:
            return
        batch = int(next(iter(inputs.values())).shape[0])
        bound = self.config.low_confidence
        by_rate = [self.config.rate > 0 and self._rng.random() < self.config.rate
                   for _ in range(batch)]  # fmt: skip
        drift_rate = self.config.during_drift_rate
        drifting = drift_rate > 0 and self.drift is not None and self.drift.is_open(model, version)
        by_drift = [drifting and self._rng.random() < drift_rate for _ in range(batch)]
        with self._lock:
            self.counts.offered += batch
        if bound is None and not any(by_rate) and not any(by_drift):
            return  # the common case: nothing chosen, nothing computed
        found = predicted_classes(outputs)
        classes = found[0] if found is not None else None
        confidences = top1_confidence(outputs)
        now = self._clock()
        for i in range(batch):
            conf = None
            if confidences is not None and np.isfinite(confidences[i]):
                conf = float(confidences[i])
            predicted = int(classes[i]) if classes is not None else None
            if bound is not None and conf is not None and conf < bound:
                reason = "low_confidence"
            elif by_drift[i]:
                reason = "drift"
            elif by_rate[i]:
                reason = "rate"
            else:
                continue
            if not self._admit(predicted, now):
                continue
            chosen = _Chosen(
                model, version, prediction_id, i, predicted, conf, reason, now,
                {name: np.array(arr[i], copy=True) for name, arr in inputs.items()},
            )  # fmt: skip
            try:
                self._queue.put_nowait(chosen)
            except queue.Full:
                with self._lock:
                    self.counts.dropped_queue_full += 1
                    self.counts.kept -= 1
                    self._unreported_drops += 1
                    self._hour_count -= 1
                    self._class_counts[predicted] -= 1

    def _admit(self, predicted: int | None, now: float) -> bool:
        """Count a chosen sample against the hour and its class; whether it may be kept."""
        hour = int(now // 3600)
        with self._lock:
            self.counts.chosen += 1
            if hour != self._hour:
                self._hour, self._hour_count = hour, 0
                self._class_counts.clear()
            if self._hour_count >= self.config.max_per_hour:
                self.counts.skipped_hourly += 1
                return False
            quota = self.config.class_quota
            if quota is not None and self._class_counts[predicted] >= quota:
                self.counts.skipped_quota += 1
                return False
            self._hour_count += 1
            self._class_counts[predicted] += 1
            self.counts.kept += 1
            return True

    def on_label(self, prediction_id: str, labels: Sequence[int]) -> None:
        """An accepted late label (a :class:`~edgedl.agent.labels.PredictionLog` id listener)."""
        try:
            self._queue.put_nowait(_Label(prediction_id, tuple(labels)))
        except queue.Full:
            with self._lock:
                self.counts.dropped_queue_full += 1

    # ------------------------------------------------------------ the writer thread

    def start(self) -> None:
        """Start writing chosen samples to the spool."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgedl-sampling", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, then stop (the spool stays open for the publisher)."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join()
        self._thread = None

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written; whether it was in time."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(item)
            except Exception:
                log.exception("sampling: could not spool a sample")
            finally:
                self._queue.task_done()

    def _write(self, item: _Chosen | _Label) -> None:
        if isinstance(item, _Label):
            kept = self._by_prediction.get(item.prediction_id, {})
            for index, sample_id in kept.items():
                if index < len(item.labels):
                    label = SampleLabel(
                        id=sample_id, fleet=self.fleet, device=self.device, label=item.labels[index]
                    )
                    if self._spool(lambda _seq, _d, m=label: encode_sample(m)) is not None:
                        self.counts.labels += 1
            return
        tensors = {name: SampleTensor.of(arr) for name, arr in item.inputs.items()}

        def build(seq: int, _dropped: int) -> bytes:
            message = SampleMessage(
                id=f"{self.fleet}:{self.device}:{self.spool.epoch}:{seq}",
                fleet=self.fleet,
                device=self.device,
                model=item.model,
                version=item.version,
                time=item.time,
                reason=item.reason,  # type: ignore[arg-type]
                prediction_id=item.prediction_id,
                index=item.index,
                predicted=item.predicted,
                confidence=item.confidence,
                inputs=tensors,
                dropped=self._unreported_drops,
            )
            return encode_sample(message)

        seq = self._spool(build)
        if seq is None:
            return
        with self._lock:
            self._unreported_drops = 0
            self.counts.written += 1
        if item.prediction_id is not None:
            ids = self._by_prediction.setdefault(item.prediction_id, {})
            ids[item.index] = f"{self.fleet}:{self.device}:{self.spool.epoch}:{seq}"
            self._by_prediction.move_to_end(item.prediction_id)
            while len(self._by_prediction) > MAX_LABELLABLE:
                self._by_prediction.popitem(last=False)

    def _spool(self, build: Any) -> int | None:
        """Spool one message unless it takes the spool past ``max_disk_bytes``."""
        payload = build(self.spool.next_seq, 0)
        if self.spool.size_bytes + len(payload) > self.config.max_disk_bytes:
            with self._lock:
                self.counts.dropped_disk_full += 1
                self._unreported_drops += 1
            return None
        seq = self.spool.enqueue(build)
        if self._notify is not None:
            self._notify()
        return seq


class SamplerMetrics(Collector):
    """The sampler's counts for ``GET /metrics``: ``edgedl_samples_total{outcome}`` (each
    field of :class:`SamplerCounts`) and the spool's ``edgedl_samples_spooled`` messages and
    ``edgedl_samples_spooled_bytes`` bytes waiting for the broker."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def collect(self) -> Iterator[Any]:
        """The metric families, read at scrape time."""
        counts = CounterMetricFamily(
            "edgedl_samples", "Samples for retraining, by what became of them.", labels=["outcome"]
        )
        for outcome, value in asdict(self._sampler.counts).items():
            counts.add_metric([outcome], value)
        yield counts
        spool = self._sampler.spool
        yield GaugeMetricFamily(
            "edgedl_samples_spooled", "Sample messages waiting for the broker.", value=len(spool)
        )
        yield GaugeMetricFamily(
            "edgedl_samples_spooled_bytes",
            "Payload bytes of sample messages waiting for the broker.",
            value=spool.size_bytes,
        )


def offer(
    sampler: Sampler | None,
    model: str,
    version: str,
    prediction_id: str | None,
    inputs: Mapping[str, NDArray[Any]],
    outputs: Mapping[str, NDArray[Any]],
) -> None:
    """Offer an answered request to the agent's sampler, when sampling is on."""
    if sampler is not None:
        sampler.offer(model, version, prediction_id, inputs, outputs)


__all__ = [
    "MAX_LABELLABLE",
    "Sampler",
    "SamplerCounts",
    "SamplerMetrics",
    "SamplingConfig",
    "offer",
]
