"""Windows over a real broker into a real database: stored once each, bad ones dead-lettered."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import zstandard
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    metric,
    wait_until,
)

from edgedl.collector.service import Collector
from edgedl.collector.store import Store
from edgedl.telemetry import encode_window, status_topic, telemetry_topic


def _stored(collector: Collector) -> list[tuple[str, int]]:
    return sorted(collector.store.window_keys())


def test_every_window_is_stored_once_even_when_sent_twice(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, db_url, windows.fleet))
    sent = [windows.payload(f"cam-{d}", seq) for d in range(3) for seq in range(20)]
    publisher.publish_many(sent)
    publisher.publish_many(sent[:25])  # the agent resends what it was not sure about
    expected = sorted((f"cam-{d}", seq) for d in range(3) for seq in range(20))
    wait_until(lambda: _stored(collector) == expected, what="60 windows stored")
    devices = {d["device"]: d for d in get_json(f"{collector.url}/api/v1/devices")}
    assert set(devices) == {"cam-0", "cam-1", "cam-2"}
    assert all(d["inferences"] == 20 * 50 and d["windows"] == 20 for d in devices.values())
    assert devices["cam-0"]["model"] == "digits" and devices["cam-0"]["last_seq"] == 19


def test_a_killed_collector_loses_nothing_and_duplicates_nothing(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    tmp_path: Any,
) -> None:
    """SIGKILL between receipt and commit: the broker redelivers, (device, seq) dedups."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    import uuid
    from pathlib import Path

    edgedl = str(Path(sys.executable).with_name("edgedl"))
    args = [
        edgedl,
        "collector",
        "run",
        "--mqtt",
        broker.url,
        "--db",
        sqlite_url,
        "--http-port",
        "0",
        "--group",
        f"g{uuid.uuid4().hex[:6]}",
        "--client-id",
        f"c-{uuid.uuid4().hex[:6]}",
        "--fleet",
        windows.fleet,
    ]

    def launch() -> subprocess.Popen[str]:
        env = {**os.environ, "EDGEDL_COLLECTOR__MQTT__SESSION_EXPIRY_S": "120"}
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "edgedl collector" in line, proc.stderr.read() if proc.stderr else ""
        url = line.split(" on ", 1)[1].split(",", 1)[0]
        wait_until(lambda: get_json(f"{url}/healthz")["mqtt_subscribed"], what="subscribed")
        return proc

    proc = launch()
    sent = [windows.payload("pi-1", seq) for seq in range(400)]
    # The first half streams while the collector is killed; the second half waits in the
    # broker for the collector's persistent session. So the kill always lands mid-stream,
    # however fast or slow this machine is today.
    sender = threading.Thread(target=lambda: [publisher.publish(t, p) for t, p in sent[:200]])
    sender.start()
    store = Store(sqlite_url)
    wait_until(lambda: store.count_windows() >= 50, what="some windows stored")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = store.count_windows()
    sender.join()
    publisher.publish_many(sent[200:])
    proc = launch()
    try:
        wait_until(lambda: store.count_windows() == 400, timeout=30, what="all 400 windows")
        time.sleep(0.5)
        assert sorted(s for _, s in store.window_keys()) == list(range(400))
        assert killed_at < 400
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        store.close()


def test_hostile_messages_go_to_dead_letter_while_good_ones_keep_flowing(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        collector_config(broker, db_url, windows.fleet, **{"mqtt.max_payload_bytes": 20_000})
    )
    topic = telemetry_topic(windows.fleet, "cam-1")
    good = windows.window("cam-1", 0)
    as_dict: dict[str, Any] = json.loads(good.model_dump_json())
    wrong_schema = json.dumps({**as_dict, "seq": 100, "schema_version": 3}).encode()
    negative_seq = json.dumps({**as_dict, "seq": -3}).encode()
    huge = json.dumps({**as_dict, "seq": 101, "agent_version": "x" * 40}).encode() + b" " * 30_000
    bomb = zstandard.ZstdCompressor().compress(b"{" + b" " * (8 << 20))
    spoofed = encode_window(windows.window("cam-2", 5))[0]  # cam-2's window on cam-1's topic
    bad = [
        (topic, b"\x00\x01 definitely not telemetry"),
        (topic, b'{"schema_version": 1, "fleet": '),
        (topic, wrong_schema),
        (topic, negative_seq),
        (topic, huge),
        (topic, bomb),
        (topic, gzip.compress(b"[1, 2, 3]")),
        (topic, spoofed),
        (status_topic(windows.fleet, "cam-1"), b"not a status"),
    ]
    messages = []
    for i, b in enumerate(bad):
        messages.append(windows.payload("cam-1", i))
        messages.append(b)
    messages.append(windows.payload("cam-1", len(bad)))
    publisher.publish_many(messages)
    wait_until(lambda: collector.store.count_windows() == len(bad) + 1, what="the good windows")
    dead = wait_until(
        lambda: (rows := collector.store.dead_letters()) and len(rows) == len(bad) and rows,
        what="every bad message in dead_letter",
    )
    reasons = " | ".join(d["reason"] for d in dead)
    for expected in (
        "unknown payload encoding",
        "not valid JSON",
        "unsupported schema_version 3",
        "seq",
        "over the limit of 20000",
        "decompresses to more than",
        "payload is from",
        "cam-2",
    ):
        assert expected in reasons, f"{expected!r} not in {reasons}"
    assert all(d["topic"].startswith("edgedl/v1/") and d["received_at"] > 0 for d in dead)
    assert all(len(d["payload"]) <= 1024 for d in dead)
    # Still consuming afterwards.
    publisher.publish(*windows.payload("cam-1", 500))
    wait_until(lambda: collector.store.count_windows() == len(bad) + 2, what="a later window")
    metrics = collector.metrics.text().decode()
    assert f"edgedl_collector_dead_letters_total {float(len(bad))}" in metrics


def test_status_messages_say_when_a_device_comes_and_goes(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    from edgedl.telemetry import DeviceStatus, encode_status

    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    topic = status_topic(windows.fleet, "pi-9")
    online = DeviceStatus(
        fleet=windows.fleet,
        device="pi-9",
        online=True,
        since=1.0,
        agent_version="0.1",
        models=[{"name": "digits", "version": "1", "sha256": "5e" * 32}],
    )
    publisher.publish(topic, encode_status(online))
    publisher.publish(*windows.payload("pi-9", 0))
    url = f"{collector.url}/api/v1/devices/pi-9"
    body = wait_until(
        lambda: (b := _device(url)) and b["online"] and b["windows"] == 1 and b, what="pi-9 online"
    )
    assert body["status"]["models"][0]["version"] == "1"
    publisher.publish(
        topic, encode_status(online.model_copy(update={"online": False, "since": 2.0}))
    )
    wait_until(lambda: _device(url)["online"] is False, what="pi-9 offline after its last will")


def _device(url: str) -> Any:
    import httpx

    r = httpx.get(url, timeout=5)
    return r.json() if r.status_code == 200 else None


def test_lost_database_connections_lose_no_window(
    broker: Broker,
    postgres_server: str | None,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    """PostgreSQL drops the collector's connections mid-stream: batches that fail stay
    unacknowledged, are retried, and every window is stored once."""
    import threading
    import time

    import psycopg
    import pytest
    from tests.collector.conftest import create_pg_database

    if postgres_server is None:
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    url, drop = create_pg_database(postgres_server)
    try:
        collector = start_collector(collector_config(broker, url, windows.fleet))
        name = url.rsplit("/", 1)[1]
        stop = threading.Event()

        def cut_connections() -> None:
            with psycopg.connect(postgres_server, autocommit=True) as admin:
                while not stop.wait(0.15):
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )

        cutter = threading.Thread(target=cut_connections)
        cutter.start()
        try:
            for seq in range(150):
                publisher.publish(*windows.payload("pi", seq, n=5))
                time.sleep(0.005)
        finally:
            stop.set()
            cutter.join()
        wait_until(lambda: collector.store.count_windows() == 150, timeout=60, what="150 windows")
        assert sorted(s for _, s in collector.store.window_keys()) == list(range(150))
        assert collector.store.device("pi")["inferences"] == 150 * 5
        print("storage errors retried:", metric(collector, "edgedl_collector_storage_errors_total"))
        collector.stop()
    finally:
        drop()


def test_windows_and_dead_letters_older_than_the_retention_are_deleted(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    import time

    collector = start_collector(
        collector_config(broker, sqlite_url, windows.fleet, **{"storage.retention_days": 1})
    )
    publisher.publish(*windows.payload("pi", 0))
    publisher.publish(telemetry_topic(windows.fleet, "pi"), b"junk")
    wait_until(
        lambda: collector.store.count_windows() == 1 and collector.store.count_dead_letters() == 1,
        what="a window and a dead letter",
    )
    collector.monitor.tick(now=time.time() + 3600)  # an hour on: kept
    assert collector.store.count_windows() == 1
    collector.monitor.tick(now=time.time() + 2 * 86400)  # two days on: gone
    assert collector.store.count_windows() == 0 and collector.store.count_dead_letters() == 0
    assert collector.store.device("pi")["inferences"] == 50  # the device's total stays


def test_a_collector_for_some_fleets_takes_only_theirs(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    reference_manifest: Any,
    start_collector: Callable[..., Collector],
) -> None:
    other = WindowMaker(reference_manifest, windows.fleet + "-other")
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    publisher.publish(*other.payload("elsewhere", 0))
    publisher.publish(*windows.payload("here", 0))
    wait_until(lambda: collector.store.count_windows() >= 1, what="a window")
    publisher.publish(*windows.payload("here", 1))
    wait_until(lambda: collector.store.count_windows() >= 2, what="two windows")
    assert {d for d, _ in collector.store.window_keys()} == {"here"}
