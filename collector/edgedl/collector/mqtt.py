"""The MQTT side of the collector: a persistent MQTT 5 session on a shared subscription.

paho-mqtt 2.x with ``manual_ack=True``: a message is acknowledged only after the batch that
holds it is committed, and the session survives the collector (``clean_start=False`` and a
session expiry), so a crash between receipt and commit loses nothing: the broker delivers the
message again. Several collectors on one ``$share/<group>/…`` subscription split the traffic.

A broker that refuses MQTT 5 (CONNACK "unsupported protocol version"; or, before any MQTT 5
session, the connection closed at CONNECT twice in a row without TLS, or no CONNACK in
``CONNACK_TIMEOUT_S``, which is how amqtt 0.12 meets an MQTT 5 CONNECT) gets MQTT 3.1.1,
as the agent does: ``clean_session=False`` (a persistent session, still acknowledged after
commit) and a plain subscription, since 3.1.1 has no shared subscriptions.

The consumer is two threads: paho's network loop, which only queues messages, and the ingest
loop, which takes up to ``batch_size`` messages or what arrived within ``batch_delay_ms``,
commits them, then acknowledges them all.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import unquote, urlparse

from paho.mqtt.client import Client, MQTTMessage, MQTTv5, MQTTv311
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgedl.errors import ConfigError
from edgedl.samples import samples_subscription
from edgedl.telemetry import status_subscription, telemetry_subscription

from .config import MqttConfig, StorageConfig
from .ingest import Ingestor, Message
from .metrics import CollectorMetrics
from .store import StorageError

log = logging.getLogger("edgedl.collector.mqtt")

#: CONNACK reason paho reports when a 3.1.1 broker answers an MQTT 5 CONNECT.
_UNSUPPORTED_PROTOCOL = 132
#: Connections closed at CONNECT (no CONNACK) after which an MQTT 5 client tries 3.1.1.
_DROPS_BEFORE_FALLBACK = 2
#: Seconds without a CONNACK to the first MQTT 5 CONNECT after which 3.1.1 is tried.
CONNACK_TIMEOUT_S = 10.0


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
        self._tls = bool(tls or cfg.ca_file or cfg.cert_file)
        self._username = cfg.username or user
        self._password = cfg.password or password
        # A stable id keeps the persistent session across restarts; give each collector its own.
        self.client_id = cfg.client_id or f"edgedl-collector-{socket.gethostname()}"
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.last_error: str | None = None
        self._queue: queue.Queue[Message] = queue.Queue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Set on paho's thread when the broker refuses MQTT 5; the ingest loop switches.
        self._use_311 = threading.Event()
        self._awaiting_connack = False
        self._connect_started = 0.0
        self._drops_at_connect = 0
        self._had_mqtt5 = False
        self._fallback_why = ""
        self.client = self._new_client(MQTTv5)

    @property
    def shared_subscription(self) -> bool:
        """Whether telemetry comes through the group's shared subscription (MQTT 5 only)."""
        return self.cfg.shared and self.client.protocol == MQTTv5

    @property
    def protocol(self) -> str:
        """``"5"`` or ``"3.1.1"``: the MQTT version in use (or being tried)."""
        return "5" if self.client.protocol == MQTTv5 else "3.1.1"

    def _new_client(self, protocol: MQTTProtocolVersion) -> Client:
        """A paho client speaking ``protocol``, with this collector's settings and callbacks."""
        v5 = protocol == MQTTv5
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else False,
            protocol=protocol,
            manual_ack=True,
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        # Retry soon and often (one client, cheap): after a broker restart the collector should
        # be subscribed again before the devices, which back off for longer, come back.
        client.reconnect_delay_set(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s)  # type: ignore[arg-type]
        if self._username:
            client.username_pw_set(self._username, self._password)
        if self._tls:
            try:
                client.tls_set(
                    ca_certs=self.cfg.ca_file,
                    certfile=self.cfg.cert_file,
                    keyfile=self.cfg.key_file,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"mqtt: cannot load TLS files: {exc}") from exc
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        return client

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect (in the background: an absent broker is retried) and start ingesting."""
        self._connect_in_background()
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

    def _connect_in_background(self) -> None:
        if self.client.protocol == MQTTv5:
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
        else:
            self.client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def _switch_to_mqtt311(self) -> None:
        """Replace the MQTT 5 client by a 3.1.1 one (on the ingest thread, between batches)."""
        self._use_311.clear()
        # _fall_back already ended its network thread (paho's loop_stop() is not safe to call
        # again while that thread is exiting on its own).
        sock = self.client.socket()
        if sock is not None:  # a broker still reading the MQTT 5 CONNECT: hang up
            with contextlib.suppress(OSError):
                sock.close()
        self.client = self._new_client(MQTTv311)
        self.last_error = None  # what 3.1.1 meets is the news now
        log.warning(
            "broker %s:%s %s: using MQTT 3.1.1 (persistent session, plain subscription%s)",
            self.host,
            self.port,
            self._fallback_why,
            ": each collector of the group gets every message and stores it once; to divide "
            "the work, give each collector its own fleets (--fleet)"
            if self.cfg.shared
            else "",
        )
        self._connect_in_background()

    # ---------------------------------------------------------------- callbacks

    def _on_pre_connect(self, _client: Client, _userdata: Any) -> None:
        self._connect_started = time.monotonic()
        self._awaiting_connack = True

    def _connack_overdue(self) -> bool:
        """Whether the first MQTT 5 CONNECT has gone unanswered for CONNACK_TIMEOUT_S."""
        return (
            self._awaiting_connack
            and not self._had_mqtt5
            and self.client.protocol == MQTTv5
            and time.monotonic() - self._connect_started > CONNACK_TIMEOUT_S
        )

    def _on_connect(
        self, client: Client, _userdata: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._awaiting_connack = False
        self._drops_at_connect = 0
        if reason.is_failure:
            if reason.value == _UNSUPPORTED_PROTOCOL and client.protocol == MQTTv5:
                self._fall_back(client, "refuses MQTT 5")
                return
            self.last_error = f"the broker refused the connection: {reason}"
            log.warning("broker %s:%s: %s", self.host, self.port, self.last_error)
            return
        self.last_error = None
        v5 = client.protocol == MQTTv5
        self._had_mqtt5 = self._had_mqtt5 or v5
        topics: list[tuple[str, Any]] = []
        for fleet in self.cfg.fleets or ["+"]:
            if v5:
                options = SubscribeOptions(qos=1)
                group = self.cfg.group if self.cfg.shared else None
                topics.append((telemetry_subscription(fleet, group), options))
                topics.append((status_subscription(fleet), options))
                topics.append((samples_subscription(fleet), options))
            else:  # 3.1.1: QoS numbers, and no shared subscriptions
                topics.append((telemetry_subscription(fleet, None), 1))
                topics.append((status_subscription(fleet), 1))
                topics.append((samples_subscription(fleet), 1))
        client.subscribe(topics)
        self.connected.set()
        log.info(
            "connected to %s:%s as %s (MQTT %s)",
            self.host,
            self.port,
            self.client_id,
            "5" if v5 else "3.1.1",
        )

    def _fall_back(self, client: Client, why: str) -> None:
        """Stop the MQTT 5 client's network loop; the ingest loop starts a 3.1.1 one."""
        self._fallback_why = why
        self.last_error = f"the broker {why}; trying MQTT 3.1.1"
        # From paho's own thread this ends the thread without waiting; from the ingest loop
        # (CONNACK timeout) it waits for it.
        client.loop_stop()
        self._use_311.set()

    def _on_connect_fail(self, _client: Client, _userdata: Any) -> None:
        self._awaiting_connack = False  # no connection, so no CONNECT to answer
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
        self, client: Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if self._use_311.is_set():
            return  # switching protocols: not a lost connection
        at_connect, self._awaiting_connack = self._awaiting_connack, False
        if at_connect and client.protocol == MQTTv5 and not self._had_mqtt5 and not self._tls:
            # Closed at CONNECT, no CONNACK: how some brokers answer a protocol they lack. Not
            # with TLS: there it is how a broker refuses a client certificate (TLS 1.3).
            self._drops_at_connect += 1
            if self._drops_at_connect >= _DROPS_BEFORE_FALLBACK:
                self._fall_back(client, "closes MQTT 5 connections at CONNECT")
                return
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
            elif self._use_311.is_set():
                # Only with nothing queued: a message is acknowledged on the client it came by.
                self._switch_to_mqtt311()
            elif self._connack_overdue():
                self._awaiting_connack = False
                why = f"does not answer an MQTT 5 CONNECT in {CONNACK_TIMEOUT_S:.0f} s"
                self._fall_back(self.client, why)
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
        self.metrics.samples.inc(result.samples)
        self.metrics.samples_duplicate.inc(result.samples_duplicate)
        self.metrics.dead_letters.inc(len(result.dead))
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))
        if result.stored:
            newest = max(result.stored, key=lambda s: s.window.window_end)
            self.metrics.ingest_lag.set(max(0.0, now - newest.window.window_end))
