"""Ingest: turn received messages into stored windows, statuses and dead letters.

:meth:`Ingestor.ingest` takes a batch of messages (from MQTT, or straight from a benchmark),
validates each, stores the batch in one transaction and returns what happened. A message
that fails validation is a dead letter, never an exception; so is a window whose seq jumps
implausibly far (see :meth:`Store.commit_batch`) and, when the registry is required, a window
or status from a device not enrolled; a database that fails raises
:class:`~edgedl.collector.store.StorageError` so the caller keeps the batch unacknowledged
and tries again (the broker holds it meanwhile).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from edgedl.errors import TelemetryError
from edgedl.samples import SampleLabel, SampleMessage, decode_sample
from edgedl.telemetry import (
    LATENCY_EDGES_MS,
    MAX_PAYLOAD_BYTES,
    TelemetryWindow,
    decode_status,
    decode_window,
    parse_topic,
    status_topic,
    telemetry_topic,
)

from .config import IngestConfig
from .drift import percentiles
from .registry import DeviceRegistry
from .samples import store_samples
from .store import DeadLetter, ReceivedStatus, StorageError, Store, StoredWindow

log = logging.getLogger("edgedl.collector.ingest")

#: The reason of the dead letter of a message from a device not in the registry.
UNKNOWN_DEVICE = "unknown device (not enrolled: edgedl collector devices add FLEET DEVICE)"


@dataclass
class Message:
    """One received MQTT message (``mid``/``qos`` let the consumer acknowledge it later)."""

    topic: str
    payload: bytes
    received_at: float = field(default_factory=time.time)
    mid: int = 0
    qos: int = 0


@dataclass
class IngestResult:
    """What one batch did."""

    stored: list[StoredWindow] = field(default_factory=list)
    duplicates: int = 0
    refused: int = 0  # windows whose seq jumped too far (also in ``dead``)
    statuses: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    ignored: int = 0
    samples: int = 0  # samples (retraining) new to the database
    samples_duplicate: int = 0  # samples received again (redelivery) and not stored twice


class Ingestor:
    """Validates and stores batches of messages."""

    def __init__(
        self,
        store: Store,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        on_stored: Callable[[list[StoredWindow]], None] | None = None,
        registry_required: bool = False,
        clock: IngestConfig | None = None,
    ) -> None:
        self.store = store
        self.max_payload_bytes = max_payload_bytes
        self._on_stored = on_stored
        self.registry_required = registry_required
        self._registry = DeviceRegistry(store)
        self.clock = clock or IngestConfig()

    def ingest(self, messages: Sequence[Message]) -> IngestResult:
        """Validate and store a batch in one transaction. Raises StorageError if the DB fails."""
        result = IngestResult()
        windows: list[StoredWindow] = []
        statuses: list[ReceivedStatus] = []
        sampled: list[tuple[SampleMessage | SampleLabel, float]] = []
        for msg in messages:
            if msg.topic.endswith("/samples"):
                self._sample(msg, sampled, result)
            else:
                self._classify(msg, windows, statuses, result)
        if sampled:
            try:
                result.samples = store_samples(self.store, sampled)
                received = sum(isinstance(m, SampleMessage) for m, _ in sampled)
                result.samples_duplicate = received - result.samples
            except (OperationalError, InterfaceError) as exc:
                raise StorageError(f"database unavailable: {_first_line(exc)}") from exc
            except SQLAlchemyError as exc:
                raise StorageError(f"database error: {_first_line(exc)}") from exc
        if self.registry_required:
            windows, statuses = self._enrolled_only(windows, statuses, result)
        try:
            committed = self.store.commit_batch(windows, statuses, result.dead)
            stored = committed.stored
            result.dead.extend(committed.refused)
            result.refused = len(committed.refused)
        except (OperationalError, InterfaceError) as exc:
            raise StorageError(f"database unavailable: {_first_line(exc)}") from exc
        except DBAPIError:
            # One row the database refuses must not hold up the others: store one by one.
            stored = self._one_by_one(windows, statuses, result)
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {_first_line(exc)}") from exc
        result.stored = stored
        result.duplicates = len(windows) - len(stored) - result.refused
        result.statuses = len(statuses)
        if stored and self._on_stored is not None:
            self._on_stored(stored)
        return result

    def _classify(
        self,
        msg: Message,
        windows: list[StoredWindow],
        statuses: list[ReceivedStatus],
        result: IngestResult,
    ) -> None:
        try:
            fleet, device, kind = parse_topic(msg.topic)
            if kind == "telemetry":
                window = decode_window(msg.payload, max_payload_bytes=self.max_payload_bytes)
                _same_device(window.fleet, window.device, fleet, device)
                self._check_window_clock(window, msg.received_at)
                windows.append(StoredWindow(window, msg.payload, msg.received_at, _latency(window)))
            elif kind == "status":
                if not msg.payload:  # a retained status being cleared
                    result.ignored += 1
                    return
                status = decode_status(msg.payload)
                _same_device(status.fleet, status.device, fleet, device)
                ahead = status.since - msg.received_at
                if ahead > self.clock.max_clock_skew_s:
                    raise TelemetryError(
                        f"status since is {ahead:.0f} s ahead of the collector's clock "
                        f"(ingest.max_clock_skew_s = {self.clock.max_clock_skew_s:g})"
                    )
                statuses.append(ReceivedStatus(status, msg.received_at))
            else:
                result.ignored += 1
        except TelemetryError as exc:
            result.dead.append(DeadLetter(msg.topic, str(exc), msg.payload, msg.received_at))
        except Exception as exc:  # a message must never stop ingest, whatever it holds
            log.exception("unexpected error reading a message on %s", msg.topic[:200])
            reason = f"unreadable message ({type(exc).__name__}: {exc})"
            result.dead.append(DeadLetter(msg.topic, reason, msg.payload, msg.received_at))

    def _sample(
        self,
        msg: Message,
        sampled: list[tuple[SampleMessage | SampleLabel, float]],
        result: IngestResult,
    ) -> None:
        """A samples-topic message, or a dead letter when it is malformed."""
        try:
            fleet, device, _ = parse_topic(msg.topic)
            message = decode_sample(msg.payload)
            _same_device(message.fleet, message.device, fleet, device)
            if self.registry_required and (fleet, device) not in self._registry.among(
                {(fleet, device)}
            ):
                raise TelemetryError(UNKNOWN_DEVICE)
            sampled.append((message, msg.received_at))
        except TelemetryError as exc:
            result.dead.append(DeadLetter(msg.topic, str(exc), msg.payload, msg.received_at))

    def _enrolled_only(
        self,
        windows: list[StoredWindow],
        statuses: list[ReceivedStatus],
        result: IngestResult,
    ) -> tuple[list[StoredWindow], list[ReceivedStatus]]:
        """The windows and statuses of enrolled devices; the others become dead letters."""
        keys = {(w.window.fleet, w.window.device) for w in windows}
        keys |= {(s.status.fleet, s.status.device) for s in statuses}
        known = self._registry.among(keys)
        for w in windows:
            if (w.window.fleet, w.window.device) not in known:
                topic = telemetry_topic(w.window.fleet, w.window.device)
                result.dead.append(DeadLetter(topic, UNKNOWN_DEVICE, w.payload, w.received_at))
        for s in statuses:
            if (s.status.fleet, s.status.device) not in known:
                topic = status_topic(s.status.fleet, s.status.device)
                payload = s.status.model_dump_json().encode()
                result.dead.append(DeadLetter(topic, UNKNOWN_DEVICE, payload, s.received_at))
        return (
            [w for w in windows if (w.window.fleet, w.window.device) in known],
            [s for s in statuses if (s.status.fleet, s.status.device) in known],
        )

    def _check_window_clock(self, window: TelemetryWindow, received_at: float) -> None:
        """A window must end near the collector's clock: ahead by skew, behind by age."""
        ahead = window.window_end - received_at
        if ahead > self.clock.max_clock_skew_s:
            raise TelemetryError(
                f"window_end is {ahead:.0f} s ahead of the collector's clock "
                f"(ingest.max_clock_skew_s = {self.clock.max_clock_skew_s:g})"
            )
        if -ahead > self.clock.max_window_age_s:
            raise TelemetryError(
                f"window ended {-ahead:.0f} s before it arrived "
                f"(ingest.max_window_age_s = {self.clock.max_window_age_s:g})"
            )

    def _one_by_one(
        self,
        windows: list[StoredWindow],
        statuses: list[ReceivedStatus],
        result: IngestResult,
    ) -> list[StoredWindow]:
        stored: list[StoredWindow] = []
        for w in windows:
            try:
                committed = self.store.commit_batch([w])
                stored.extend(committed.stored)
                result.dead.extend(committed.refused)
                result.refused += len(committed.refused)
            except DBAPIError as exc:
                result.dead.append(
                    DeadLetter(
                        f"edgedl/v1/{w.window.fleet}/{w.window.device}/telemetry",
                        f"storage refused the window: {_first_line(exc)}",
                        w.payload,
                        w.received_at,
                    )
                )
        for s in statuses:
            try:
                self.store.commit_batch([], [s])
            except DBAPIError as exc:
                log.warning("status of %s not stored: %s", s.status.device, _first_line(exc))
        try:
            self.store.commit_batch([], [], result.dead)
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {_first_line(exc)}") from exc
        return stored


def _same_device(fleet: str, device: str, topic_fleet: str, topic_device: str) -> None:
    if (fleet, device) != (topic_fleet, topic_device):
        raise TelemetryError(
            f"payload is from {fleet}/{device} but was published on {topic_fleet}/{topic_device}"
        )


def _latency(window: TelemetryWindow) -> tuple[float | None, float | None, float | None]:
    if not window.models:
        return None, None, None
    counts = window.models[0].latency_ms.counts
    if sum(counts) <= 0:
        return None, None, None
    p50, p95, p99 = percentiles(counts, LATENCY_EDGES_MS, (0.5, 0.95, 0.99))
    return p50, p95, p99


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
