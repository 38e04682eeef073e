"""A broker that speaks only MQTT 3.1.1: the collector falls back and loses nothing.

* ``MQTT311Only`` (a front for the real Mosquitto that refuses MQTT 5 with a CONNACK, or
  closes the connection at CONNECT): the collector says it uses MQTT 3.1.1, and windows sent
  through the front, some twice, are stored once each.
* Acknowledged only after commit, over 3.1.1 too: windows the collector received while its
  database was locked, and then it was killed, are delivered again to its next run.
* amqtt (the demo's embedded broker, MQTT 3.1.1 only): windows and the device's retained
  status reach the database.
* amqtt on its own, which never answers an MQTT 5 CONNECT carrying properties: the collector
  gives up on MQTT 5 after ``CONNACK_TIMEOUT_S`` and works over 3.1.1.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.collector.helpers import Broker, WindowMaker, collector_config, get_json, wait_until
from tests.mqtt_broker import MQTT311Only, port_answers
from tests.ports import free_port

from edgedl.collector.mqtt import CONNACK_TIMEOUT_S
from edgedl.collector.service import Collector
from edgedl.collector.store import Store
from edgedl.telemetry import DeviceStatus, encode_status, status_topic

FALLBACK_LOG = "refuses MQTT 5: using MQTT 3.1.1"
# amqtt with a plain TCP listener, without the demo's front that refuses MQTT 5.
PLAIN_AMQTT = """
import asyncio, sys
from amqtt.broker import Broker

async def main() -> None:
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:" + sys.argv[1]}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


class Publisher311:
    """A plain MQTT 3.1.1 client publishing with QoS 1, waiting for each PUBACK."""

    def __init__(self, url: str) -> None:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"pub311-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def publish_many(self, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def front(broker: Broker) -> Iterator[MQTT311Only]:
    f = MQTT311Only(broker.port)
    yield f
    f.close()


def _run_broker(command: list[str], log_path: Path) -> Iterator[str]:
    pytest.importorskip("amqtt")
    port = free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*command, str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_answers("127.0.0.1", port), timeout=30, what="amqtt listening")
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log.close()
        assert code in (0, -signal.SIGTERM), log_path.read_text()


@pytest.fixture
def amqtt_url(tmp_path: Path) -> Iterator[str]:
    """The demo's embedded amqtt broker on a free port, stopped at the end."""
    command = [sys.executable, "-m", "edgedl.demo.embedded_broker", "--port"]
    yield from _run_broker(command, tmp_path / "amqtt.log")


@pytest.fixture
def plain_amqtt_url(tmp_path: Path) -> Iterator[str]:
    """amqtt's own TCP listener on a free port: silent to an MQTT 5 CONNECT."""
    yield from _run_broker([sys.executable, "-c", PLAIN_AMQTT], tmp_path / "plain-amqtt.log")


def _stored(collector: Collector) -> list[tuple[str, int]]:
    return sorted(collector.store.window_keys())


def test_a_broker_refusing_mqtt5_gets_mqtt311_and_each_window_is_stored_once(
    broker: Broker,
    front: MQTT311Only,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgedl.collector.mqtt")
    collector = start_collector(
        collector_config(Broker(front.host, front.port), sqlite_url, windows.fleet)
    )
    assert collector.mqtt is not None and collector.mqtt.protocol == "3.1.1"
    assert front.refused_v5 >= 1 and front.piped >= 1
    fallbacks = [r.getMessage() for r in caplog.records if FALLBACK_LOG in r.getMessage()]
    assert len(fallbacks) == 1, fallbacks
    assert "each collector of the group gets every message" in fallbacks[0]  # shared asked
    assert get_json(f"{collector.url}/healthz")["mqtt_error"] is None

    publisher = Publisher311(front.url)
    try:
        sent = [windows.payload(f"cam-{d}", seq) for d in range(2) for seq in range(30)]
        publisher.publish_many(sent)
        publisher.publish_many(sent[:20])  # the agent resends what it was not sure about
    finally:
        publisher.close()
    expected = sorted((f"cam-{d}", seq) for d in range(2) for seq in range(30))
    wait_until(lambda: _stored(collector) == expected, what="60 windows stored")
    devices = {d["device"]: d for d in get_json(f"{collector.url}/api/v1/devices")}
    assert all(d["windows"] == 30 for d in devices.values()) and len(devices) == 2


def test_a_broker_closing_mqtt5_connections_at_connect_gets_mqtt311(
    broker: Broker,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    front = MQTT311Only(broker.port, connack=False)
    try:
        collector = start_collector(
            collector_config(
                Broker(front.host, front.port), sqlite_url, windows.fleet, **{"mqtt.shared": False}
            )
        )
        assert collector.mqtt is not None and collector.mqtt.protocol == "3.1.1"
        assert front.refused_v5 >= 2  # one closed connection is not enough to give up on 5
        publisher = Publisher311(front.url)
        try:
            publisher.publish_many([windows.payload("pi", seq) for seq in range(5)])
        finally:
            publisher.close()
        wait_until(lambda: _stored(collector) == [("pi", s) for s in range(5)], what="5 windows")
    finally:
        front.close()


def test_mqtt311_windows_received_but_not_committed_come_back_after_a_crash(
    broker: Broker,
    front: MQTT311Only,
    postgres_server: str | None,
    windows: WindowMaker,
) -> None:
    """The database is locked while the windows arrive, then the collector is SIGKILLed:
    nothing was acknowledged, so the broker delivers all of it to the next run."""
    import psycopg
    from tests.collector.conftest import create_pg_database

    if postgres_server is None:
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    db_url, drop = create_pg_database(postgres_server)
    client_id = f"c311-{uuid.uuid4().hex[:6]}"
    args = [
        str(Path(sys.executable).with_name("edgedl")), "collector", "run",
        "--mqtt", front.url, "--db", db_url, "--http-port", "0", "--no-shared",
        "--client-id", client_id, "--fleet", windows.fleet,
    ]  # fmt: skip

    def launch() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "edgedl collector" in line, proc.stderr.read() if proc.stderr else ""
        url = line.split(" on ", 1)[1].split(",", 1)[0]
        wait_until(lambda: get_json(f"{url}/healthz")["mqtt_subscribed"], what="subscribed")
        return proc

    store = Store(db_url)
    proc = launch()
    try:
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE windows IN ACCESS EXCLUSIVE MODE")
            publisher = Publisher311(front.url)
            try:
                publisher.publish_many([windows.payload("pi", seq) for seq in range(40)])
            finally:
                publisher.close()

            def inserting_blocked() -> bool:
                # Another connection: pg_stat_activity is frozen within a transaction.
                with psycopg.connect(db_url, autocommit=True) as watcher:
                    row = watcher.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query ILIKE 'INSERT INTO windows%'"
                    ).fetchone()
                return row is not None and row[0] > 0

            # The collector holds windows it received and cannot commit: it dies now.
            wait_until(inserting_blocked, what="the collector's INSERT waiting on the lock")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            locker.rollback()
        assert store.count_windows() == 0
        proc = launch()
        wait_until(lambda: store.count_windows() == 40, timeout=30, what="all 40 windows")
        assert sorted(s for _, s in store.window_keys()) == list(range(40))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        stderr = proc.stderr.read() if proc.stderr else ""
        assert FALLBACK_LOG in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        store.close()
        drop()


def test_amqtt_carries_windows_and_the_retained_status(
    amqtt_url: str,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    host, port = amqtt_url.split("://", 1)[1].rsplit(":", 1)
    publisher = Publisher311(amqtt_url)
    try:
        # Retained before the collector exists: it must still see the device online.
        status = DeviceStatus(
            fleet=windows.fleet, device="pi", online=True, agent_version="retained", since=1.0
        )
        publisher.publish_many([(status_topic(windows.fleet, "pi"), encode_status(status))], True)
        collector = start_collector(
            collector_config(Broker(host, int(port)), sqlite_url, windows.fleet)
        )
        assert collector.mqtt is not None and collector.mqtt.protocol == "3.1.1"
        publisher.publish_many([windows.payload("pi", seq) for seq in range(50)])
    finally:
        publisher.close()
    wait_until(lambda: _stored(collector) == [("pi", s) for s in range(50)], what="50 windows")
    (device,) = get_json(f"{collector.url}/api/v1/devices")
    assert device["status"]["agent_version"] == "retained" and device["status"]["online"] is True


@pytest.mark.slow
def test_a_broker_silent_to_mqtt5_gets_mqtt311_after_the_connack_timeout(
    plain_amqtt_url: str,
    sqlite_url: str,
    windows: WindowMaker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edgedl.collector.mqtt")
    host, port = plain_amqtt_url.split("://", 1)[1].rsplit(":", 1)
    collector = Collector(
        collector_config(Broker(host, int(port)), sqlite_url, windows.fleet)
    ).start()
    try:
        assert collector.mqtt is not None
        assert collector.mqtt.subscribed.wait(CONNACK_TIMEOUT_S + 20), collector.mqtt.last_error
        assert collector.mqtt.protocol == "3.1.1"
        assert any("does not answer an MQTT 5 CONNECT" in r.getMessage() for r in caplog.records)
        publisher = Publisher311(plain_amqtt_url)
        try:
            publisher.publish_many([windows.payload("pi", seq) for seq in range(10)])
        finally:
            publisher.close()
        wait_until(lambda: _stored(collector) == [("pi", s) for s in range(10)], what="windows")
    finally:
        collector.stop()


@pytest.mark.slow
def test_an_agent_facing_a_broker_silent_to_mqtt5_publishes_over_mqtt311(
    plain_amqtt_url: str,
    sqlite_url: str,
    windows: WindowMaker,
    tmp_path: Path,
) -> None:
    from edgedl.agent.telemetry.config import TelemetryConfig
    from edgedl.agent.telemetry.service import TelemetryService
    from edgedl.agent.telemetry.window import ModelInfo

    host, port = plain_amqtt_url.split("://", 1)[1].rsplit(":", 1)
    collector = Collector(
        collector_config(Broker(host, int(port)), sqlite_url, windows.fleet)
    ).start()
    # The collector's session must exist first: amqtt keeps nothing for a topic nobody follows.
    assert collector.mqtt is not None
    assert collector.mqtt.subscribed.wait(CONNACK_TIMEOUT_S + 20), collector.mqtt.last_error
    config = TelemetryConfig(
        mqtt=plain_amqtt_url,
        fleet=windows.fleet,
        device="pi-silent",
        interval_s=0.3,
        spool_path=tmp_path / "spool.db",
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        keepalive_s=5,
    )
    service = TelemetryService(config)
    service.builder.register(ModelInfo("digits", "1", "0" * 64))
    service.start()
    try:
        assert service.publisher.wait_connected(CONNACK_TIMEOUT_S + 20)
        assert service.publisher.protocol == "3.1.1"
        wait_until(lambda: len(_stored(collector)) >= 3, timeout=30, what="the agent's windows")
        seqs = [seq for device, seq in _stored(collector) if device == "pi-silent"]
        assert seqs == list(range(len(seqs)))  # in order, none missing, none twice
    finally:
        service.stop()
        collector.stop()
