"""The MQTT side of the collector: a persistent MQTT 5 session on a shared subscription.

paho-mqtt 2.x with ``manual_ack=True``: a message is acknowledged only after the batch that
holds it is committed, and the session survives the collector (``clean_start=False`` and a
session expiry), so a crash between receipt and commit loses nothing: the broker delivers the
message again. Several collectors on one ``$share/<group>/…`` subscription split the traffic.

The consumer is two threads: paho's network loop, which only queues messages, and the ingest
loop, which takes up to ``batch_size`` messages or what arrived within ``batch_delay_ms``,
commits them, then acknowledges them all.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import unquote, urlparse

from paho.mqtt.client import Client, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgedl.errors import ConfigError
from edgedl.telemetry import status_subscription, telemetry_subscription

from .config import MqttConfig, StorageConfig
from .ingest import Ingestor, Message
from .metrics import CollectorMetrics
from .store import StorageError

log = logging.getLogger("edgedl.collector.mqtt")


def parse_broker_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """``(host, port, tls, username, password)`` of ``mqtt://`` or ``mqtts://`` URL."""
    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError(
            f"mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], got {url!r}"
        )
    tls = u.scheme == "mqtts"
    try:
        port = u.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ConfigError(f"mqtt.url: bad port in {url!r}") from exc
    user = unquote(u.username) if u.username else None
    password = unquote(u.password) if u.password else None
    return u.hostname, port, tls, user, password


class MqttConsumer:
    """Receives telemetry and status messages and feeds them to an :class:`Ingestor`."""

    def __init__(
        self,
        cfg: MqttConfig,
        storage: StorageConfig,
        ingestor: Ingestor,
        metrics: CollectorMetrics,
    ) -> None:
        self.cfg = cfg
        self.storage = storage
        self.ingestor = ingestor
        self.metrics = metrics
        self.host, self.port, tls, user, password = parse_broker_url(cfg.url)
        # A stable id keeps the persistent session across restarts; give each collector its own.
        self.client_id = cfg.client_id or f"edgedl-collector-{socket.gethostname()}"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self._queue: queue.Queue[Message] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTv5,
            manual_ack=True,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        # Retry soon and often (one client, cheap): after a broker restart the collector should
        # be subscribed again before the devices, which back off for longer, come back.
        self.client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        username = cfg.username or user
        if username:
            self.client.username_pw_set(username, cfg.password or password)
        if tls or cfg.ca_file or cfg.cert_file:
            try:
                self.client.tls_set(
                    ca_certs=cfg.ca_file,
                    certfile=cfg.cert_file,
                    keyfile=cfg.key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"mqtt: cannot load TLS files: {exc}") from exc
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_connect_fail = self._on_connect_fail

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect (in the background: an absent broker is retried) and start ingesting."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        self.client.connect_async(
            self.host,
            self.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._ingest_loop, name="edgedl-ingest", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Commit and acknowledge what was received, then disconnect."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
        # DISCONNECT goes out after the PUBACKs already queued, so they reach the broker.
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish with QoS 1 (alerts)."""
        self.client.publish(topic, payload, qos=1, retain=retain)

    # ---------------------------------------------------------------- callbacks

    def _on_connect(
        self, client: Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            self.last_error = f"the broker refused the connection: {reason}"
            log.warning("broker %s:%s: %s", self.host, self.port, self.last_error)
            return
        self.last_error = None
        options = SubscribeOptions(qos=1)
        group = self.cfg.group if self.cfg.shared else None
        topics = []
        for fleet in self.cfg.fleets or ["+"]:
            topics.append((telemetry_subscription(fleet, group), options))
            topics.append((status_subscription(fleet), options))
        client.subscribe(topics)
        self.connected.set()
        log.info("connected to %s:%s as %s", self.host, self.port, self.client_id)

    def _on_connect_fail(self, _client: Client, _userdata: Any) -> None:
        self.last_error = "cannot connect (broker unreachable, or TLS refused)"
        log.warning("broker %s:%s: %s; retrying", self.host, self.port, self.last_error)

    def _on_subscribe(
        self, _client: Client, _userdata: Any, _mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("the broker refused the subscriptions: %s", ", ".join(failed))
            return
        self.subscribed.set()

    def _on_disconnect(
        self, _client: Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if reason.is_failure and not self._stopping.is_set() and self.last_error is None:
            self.last_error = f"disconnected: {reason}"
        if not self._stopping.is_set():
            log.warning("disconnected from %s:%s (%s); reconnecting", self.host, self.port, reason)

    def _on_message(self, _client: Client, _userdata: Any, msg: MQTTMessage) -> None:
        self._queue.put(Message(msg.topic, bytes(msg.payload), time.time(), msg.mid, msg.qos))

    # ---------------------------------------------------------------- ingest loop

    def _ingest_loop(self) -> None:
        delay = self.storage.batch_delay_ms / 1000.0
        while not self._stopping.is_set():
            batch = self._take_batch(delay)
            if batch:
                self._commit(batch)
        # Stopping: finish what has arrived. Anything later stays unacknowledged, and the
        # broker delivers it again to this session or to another collector of the group.
        left = self._queue.qsize()
        while left > 0:
            batch = []
            while len(batch) < min(left, self.storage.batch_size):
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if not batch:
                return
            self._commit(batch)
            left -= len(batch)

    def _take_batch(self, delay: float) -> list[Message]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + delay
        while len(batch) < self.storage.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    def _commit(self, batch: list[Message]) -> None:
        backoff = 0.5
        while True:
            started = time.perf_counter()
            try:
                result = self.ingestor.ingest(batch)
                break
            except Exception as exc:  # StorageError, or a bug: keep the batch, keep running
                self.metrics.storage_errors.inc()
                if not isinstance(exc, StorageError):
                    log.exception("ingest failed")
                log.error("%s; retrying in %.1f s (messages stay unacknowledged)", exc, backoff)
                if self._stopping.wait(backoff):
                    return  # not acknowledged: the broker delivers them again
                backoff = min(backoff * 2, 10.0)
        for m in batch:
            if m.qos > 0:
                self.client.ack(m.mid, m.qos)
        now = time.time()
        self.metrics.messages.inc(len(batch))
        self.metrics.windows.inc(len(result.stored))
        self.metrics.duplicates.inc(result.duplicates)
        self.metrics.dead_letters.inc(len(result.dead))
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        if result.stored:
            newest = max(result.stored, key=lambda s: s.window.window_end)
            self.metrics.ingest_lag.set(max(0.0, now - newest.window.window_end))
