"""The MQTT side of telemetry: drain the spool to the broker, one PUBACK at a time.

:class:`Publisher` owns one paho-mqtt 2.x client and one thread. The thread connects (MQTT 5,
or 3.1.1 when the broker refuses 5), keeps a persistent session (a stable client id,
``clean_start`` off, a session expiry interval), announces the device with a retained
``online`` status and leaves a retained ``offline`` last will, and publishes spooled windows
in sequence order at QoS 1 with at most ``max_inflight`` unacknowledged. A window is removed
from the spool only in ``on_publish``, i.e. once the broker has acknowledged it.

Lost connections are retried with exponential backoff and jitter (``reconnect_min_s`` doubling
up to ``reconnect_max_s``, each wait drawn between half and all of that), so a fleet that lost
its broker does not come back in lockstep. paho is driven with ``loop()`` from this one thread,
so callbacks and publishes never race.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgedl.errors import TelemetryError
from edgedl.telemetry import (
    CONTENT_TYPES,
    GZIP_MAGIC,
    ZSTD_MAGIC,
    DeviceStatus,
    encode_status,
    events_topic,
    status_topic,
    telemetry_topic,
)

from .config import TelemetryConfig
from .spool import Spool

log = logging.getLogger("edgedl.agent.telemetry")

#: Pipeline event messages kept in memory while disconnected (events are not spooled).
MAX_QUEUED_EVENTS = 1000
#: CONNACK reason paho reports when a 3.1.1 broker answers an MQTT 5 CONNECT.
_UNSUPPORTED_PROTOCOL = 132
_LOOP_TIMEOUT_S = 0.2


def content_type(payload: bytes) -> str:
    """The content type a spooled payload is declared with, read from its first bytes."""
    if payload.startswith(ZSTD_MAGIC):
        return CONTENT_TYPES["zstd"]
    if payload.startswith(GZIP_MAGIC):
        return CONTENT_TYPES["gzip"]
    return CONTENT_TYPES["none"]


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): doubling, capped, jittered."""
    ceiling = min(high, low * 2 ** min(attempt, 30))
    return random.uniform(ceiling / 2, ceiling)


class Publisher:
    """Sends spooled telemetry windows to the broker; :meth:`start` and :meth:`stop` it.

    ``status(online)`` makes the :class:`DeviceStatus` to retain on the status topic: called
    at each connect (online) and for the last will (offline).
    """

    def __init__(
        self,
        config: TelemetryConfig,
        spool: Spool,
        status: Callable[[bool], DeviceStatus],
    ) -> None:
        if not config.enabled:
            raise TelemetryError("telemetry needs a broker URL (telemetry.mqtt or --mqtt)")
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(config, key)
            if path is not None and not path.is_file():
                raise TelemetryError(f"telemetry.{key}: no such file {path}")
        self.config = config
        self.spool = spool
        self._status = status
        self._broker = config.broker()
        self._topic = telemetry_topic(config.fleet, config.device)
        self._status_topic = status_topic(config.fleet, config.device)
        self._events_topic = events_topic(config.fleet, config.device)
        self._events: deque[bytes] = deque()
        self.events_dropped = 0
        """Event messages dropped because more than MAX_QUEUED_EVENTS waited."""
        self._protocol = MQTTProtocolVersion.MQTTv5
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, tuple[Spool, int]] = {}  # paho mid -> (spool, seq)
        self._spools: list[tuple[str, Spool]] = [(self._topic, spool)]
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._hold_until = 0.0
        self._refused: str | None = None
        self._stop_deadline = 0.0
        self.acknowledged = 0
        """Windows the broker acknowledged since :meth:`start`."""
        self.connects = 0
        """Successful connections since :meth:`start`."""
        self.last_error: str | None = None
        """Why the last connection attempt or connection failed, for status pages."""
        self.rollout: Callable[[], dict[str, Any] | None] | None = None
        """Supplies the ``rollout`` field of the status (set by the fleet updater)."""
        self._status_changed = threading.Event()
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}

    # ------------------------------------------------------------------ public surface

    def start(self) -> None:
        """Start the publishing thread (it connects in the background)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        log.info(
            "telemetry to %s as %s (fleet %s, device %s)",
            self.config.redacted_url(),
            self.config.effective_client_id,
            self.config.fleet,
            self.config.device,
        )
        self._thread = threading.Thread(target=self._run, name="edgedl-telemetry-mqtt", daemon=True)
        self._thread.start()

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Send what the spool holds for up to ``flush_timeout_s``, mark offline, disconnect.

        Meanwhile it keeps (re)connecting if it has to. Windows still unacknowledged at the
        end stay in the spool for the next start.
        """
        thread = self._thread
        if thread is None:
            return
        self._stop_deadline = time.monotonic() + flush_timeout_s
        self._stopping.set()
        self._wake.set()
        thread.join(flush_timeout_s + 15)
        self._thread = None

    def publish_event(self, payload: bytes) -> None:
        """Queue a pipeline event message for ``/events`` (QoS 1, kept in memory only).

        Windows are what must survive; events are best effort: past MAX_QUEUED_EVENTS
        waiting (a long outage), the oldest are dropped and counted.
        """
        with self._lock:
            if len(self._events) >= MAX_QUEUED_EVENTS:
                self._events.popleft()
                self.events_dropped += 1
            self._events.append(payload)
        self._wake.set()

    def subscribe(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Call ``handler(payload)`` for every message on ``topic`` (subscribed at QoS 1 on
        every connect, so a retained message arrives after each, and at once when connected).
        The handler runs on the publishing thread and must not block."""
        self._subscriptions[topic] = handler
        client = self._client
        if client is not None and self._connected.is_set():
            client.subscribe(topic, qos=1)

    def add_spool(self, topic: str, spool: Spool) -> None:
        """Also drain ``spool`` to ``topic``, the same way, after the windows (call before
        :meth:`start`). The samples of ``[sampling]`` travel so."""
        self._spools.append((topic, spool))

    def notify(self) -> None:
        """A window was spooled: send it without waiting for the next poll."""
        self._wake.set()

    def publish_status(self) -> None:
        """Retain a fresh ``online`` status now (what the device runs changed)."""
        self._status_changed.set()
        self._wake.set()

    def _current_status(self, online: bool) -> DeviceStatus:
        status = self._status(online)
        if self.rollout is not None and status.rollout is None:
            status = status.model_copy(update={"rollout": self.rollout()})
        return status

    @property
    def connected(self) -> bool:
        """Whether the broker has accepted the connection."""
        return self._connected.is_set()

    @property
    def protocol(self) -> str:
        """``"5"`` or ``"3.1.1"``: the MQTT version in use (or being tried)."""
        return "5" if self._protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    @property
    def inflight(self) -> int:
        """Windows published and not yet acknowledged."""
        with self._lock:
            return len(self._inflight)

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds passed; whether it is connected."""
        return self._connected.wait(timeout)

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        attempt = 0
        while self._keep_going():
            try:
                client = self._client
                if client is None or not self._connected.is_set():
                    if self._connect():
                        attempt = 0
                        continue
                    self._pause(
                        backoff_delay(
                            attempt, self.config.reconnect_min_s, self.config.reconnect_max_s
                        )
                    )
                    attempt += 1
                    continue
                rc = client.loop(timeout=_LOOP_TIMEOUT_S)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._lost(f"connection lost ({mqtt.error_string(rc)})")
                    continue
                if self._wake.is_set():
                    self._wake.clear()
                self._drain(client)
                self._send_events(client)
                if self._status_changed.is_set():
                    self._status_changed.clear()
                    status = encode_status(self._current_status(True))
                    client.publish(self._status_topic, status, qos=1, retain=True)
            except Exception:
                # Whatever went wrong (a disk error in the spool, a bug), the thread lives on:
                # the windows are still on disk and the next round retries them.
                log.exception("telemetry: publishing failed; retrying")
                self._lost("publishing failed")
                self._pause(self.config.reconnect_max_s)
        try:
            self._goodbye()
        except Exception:
            log.exception("telemetry: could not say goodbye to the broker")

    def _keep_going(self) -> bool:
        """Until stop(); then only while there is something to send and time to send it."""
        if not self._stopping.is_set():
            return True
        if time.monotonic() >= self._stop_deadline:
            return False
        return self.inflight > 0 or any(s.pending(1) for _, s in self._spools)

    def _pause(self, seconds: float) -> None:
        if self._stopping.is_set():
            time.sleep(max(0.0, min(seconds, self._stop_deadline - time.monotonic())))
        else:
            self._stopping.wait(seconds)

    def _connect(self) -> bool:
        """One connection attempt, up to CONNACK; whether the broker accepted it."""
        self._refused = None
        try:
            client = self._client_for_attempt()
            if self._protocol == MQTTProtocolVersion.MQTTv5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = self.config.session_expiry_s
                client.connect(
                    self._broker.host,
                    self._broker.port,
                    keepalive=self.config.keepalive_s,
                    clean_start=False,
                    properties=props,
                )
            else:
                client.connect(
                    self._broker.host, self._broker.port, keepalive=self.config.keepalive_s
                )
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._note_failure(f"cannot connect to {self.config.redacted_url()}: {exc}")
            return False
        deadline = time.monotonic() + max(10.0, self.config.keepalive_s)
        timed_out = False
        while self._keep_going():
            if time.monotonic() >= deadline:
                timed_out = True
                break
            rc = client.loop(timeout=_LOOP_TIMEOUT_S)
            if self._connected.is_set():
                return True
            if self._refused is not None or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        reason = self._refused or "no CONNACK from the broker"
        if (
            self._refused is None
            and self.connects == 0
            and self._protocol == MQTTProtocolVersion.MQTTv5
            and (timed_out or not self._broker.tls)
        ):
            # Some 3.1.1-only brokers (amqtt) neither answer nor refuse an MQTT 5 CONNECT that
            # carries properties, and drop it later: no CONNACK from a broker never reached
            # over MQTT 5 means 3.1.1. Not when TLS dropped the connection at once, which is
            # how a refused client certificate looks.
            log.info("broker does not answer MQTT 5: using MQTT 3.1.1")
            self._protocol = MQTTProtocolVersion.MQTTv311
            self._refused = "switch to 3.1.1"
        if self._refused == "switch to 3.1.1":
            return self._connect()
        self._note_failure(f"{self.config.redacted_url()} refused the connection: {reason}")
        return False

    def _client_for_attempt(self) -> mqtt.Client:
        """The paho client, created once per protocol version so its session state survives."""
        if self._client is not None and self._client.protocol == self._protocol:
            client = self._client
        else:
            v5 = self._protocol == MQTTProtocolVersion.MQTTv5
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=self.config.effective_client_id,
                clean_session=None if v5 else False,
                protocol=self._protocol,
                reconnect_on_failure=False,
            )
            client.on_connect = self._on_connect
            client.on_publish = self._on_publish
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.max_inflight_messages_set(self.config.max_inflight)
            client.connect_timeout = 10.0
            if self._broker.tls:
                ca = self.config.ca_file
                cert = self.config.cert_file
                key = self.config.key_file
                client.tls_set(
                    ca_certs=str(ca) if ca else None,
                    certfile=str(cert) if cert else None,
                    keyfile=str(key) if key else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            if self._broker.username is not None:
                client.username_pw_set(self._broker.username, self._broker.password)
            with self._lock:
                self._inflight.clear()  # a new client has no session: resend from the spool
            for _, spool in self._spools:
                spool.release()
            self._client = client
        client.will_set(
            self._status_topic, encode_status(self._current_status(False)), qos=1, retain=True
        )
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            if (
                reason_code.value == _UNSUPPORTED_PROTOCOL
                and self._protocol == MQTTProtocolVersion.MQTTv5
            ):
                log.info("broker refuses MQTT 5: using MQTT 3.1.1")
                self._protocol = MQTTProtocolVersion.MQTTv311
                self._refused = "switch to 3.1.1"
            else:
                self._refused = str(reason_code)
            return
        self.connects += 1
        self.last_error = None
        client.publish(
            self._status_topic, encode_status(self._current_status(True)), qos=1, retain=True
        )
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._connected.set()
        self._wake.set()
        log.info(
            "telemetry connected (MQTT %s, session %s)",
            self.protocol,
            "resumed" if flags.session_present else "new",
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self._subscriptions.get(message.topic)
        if handler is None:
            return
        try:
            handler(bytes(message.payload))
        except Exception:  # a bad message must never stop telemetry
            log.exception("telemetry: could not handle a message on %s", message.topic)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected.clear()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._lock:
            found = self._inflight.pop(mid, None)
        if found is None:
            return  # a status message
        spool, seq = found
        if reason_code.is_failure:
            # Refused, not lost: the message stays spooled and is offered again later.
            log.warning("broker refused spooled message %d: %s", seq, reason_code)
            spool.release({seq})
            self._hold_until = time.monotonic() + self.config.reconnect_max_s
            return
        spool.remove(seq)
        if spool is self.spool:
            self.acknowledged += 1

    def _drain(self, client: mqtt.Client) -> None:
        """Publish spooled messages in order while fewer than ``max_inflight`` are unacked:
        the windows first, then the other spools (:meth:`add_spool`)."""
        if time.monotonic() < self._hold_until:
            return
        for topic, spool in self._spools:
            if not self._drain_one(client, topic, spool):
                return

    def _drain_one(self, client: mqtt.Client, topic: str, spool: Spool) -> bool:
        """Publish from one spool; False when the connection failed on the way."""
        with self._lock:
            room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return True
        batch = spool.take(room)
        for i, window in enumerate(batch):
            props: Properties | None = None
            if self._protocol == MQTTProtocolVersion.MQTTv5:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ContentType = content_type(window.payload)
            info = client.publish(topic, window.payload, qos=1, properties=props)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                # paho keeps a QoS 1 message it could not send and sends it on reconnect.
                with self._lock:
                    self._inflight[info.mid] = (spool, window.seq)
                spool.release({w.seq for w in batch[i + 1 :]})
                self._lost("connection lost while publishing")
                return False
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                spool.release({w.seq for w in batch[i:]})
                self._lost(f"publish failed ({mqtt.error_string(info.rc)})")
                return False
            with self._lock:
                self._inflight[info.mid] = (spool, window.seq)
        return True

    def _send_events(self, client: mqtt.Client) -> None:
        while True:
            with self._lock:
                if not self._events:
                    return
                payload = self._events.popleft()
            info = client.publish(self._events_topic, payload, qos=1)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                with self._lock:
                    self._events.appendleft(payload)
                return

    def _lost(self, why: str) -> None:
        self._note_failure(why)
        self._connected.clear()  # the next connect() closes the socket first

    def _note_failure(self, why: str) -> None:
        if why != self.last_error:
            log.warning("telemetry: %s", why)
        self.last_error = why

    def _goodbye(self) -> None:
        """On stop, after the flush: retain ``offline`` and disconnect cleanly."""
        client = self._client
        if client is None or not self._connected.is_set():
            return
        info = client.publish(
            self._status_topic, encode_status(self._current_status(False)), qos=1, retain=True
        )
        end = time.monotonic() + 2.0
        while not info.is_published() and time.monotonic() < end:
            if client.loop(timeout=_LOOP_TIMEOUT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
        client.disconnect()
        client.loop(timeout=_LOOP_TIMEOUT_S)
        self._connected.clear()
