"""The JSON API, its OpenAPI description and /metrics, as a client sees them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
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


def test_devices_windows_and_openapi(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        collector_config(broker, sqlite_url, windows.fleet, references=[str(manifest_file)])
    )
    publisher.publish_many([windows.payload("pi-1", seq, n=30) for seq in range(5)])
    wait_until(lambda: collector.store.count_windows() == 5, what="5 windows")
    devices = get_json(f"{collector.url}/api/v1/devices")
    assert len(devices) == 1
    d = devices[0]
    assert {"device", "fleet", "online", "last_seen", "model", "version", "inferences"} <= set(d)
    assert (d["device"], d["fleet"], d["online"], d["model"], d["version"], d["inferences"]) == (
        "pi-1",
        windows.fleet,
        True,
        "digits",
        "1",
        150,
    )
    detail = get_json(f"{collector.url}/api/v1/devices/pi-1")
    assert detail["latest_window"]["seq"] == 4
    assert detail["latest_window"]["pipelines"]["kws"]["vad"]["received"] == 30
    rows = get_json(f"{collector.url}/api/v1/windows?device=pi-1&limit=3")
    assert [r["seq"] for r in rows] == [4, 3, 2]
    assert all(r["latency_p95_ms"] >= r["latency_p50_ms"] > 0 and r["throughput"] > 0 for r in rows)
    assert httpx.get(f"{collector.url}/api/v1/devices/nobody").status_code == 404
    assert httpx.get(f"{collector.url}/api/v1/alerts?state=maybe").status_code == 400
    assert httpx.get(f"{collector.url}/api/v1/windows?limit=lots").status_code == 400
    spec = get_json(f"{collector.url}/openapi.json")
    assert spec["openapi"].startswith("3.")
    for path in (
        "/api/v1/devices",
        "/api/v1/devices/{device}",
        "/api/v1/drift",
        "/api/v1/alerts",
        "/metrics",
    ):
        assert path in spec["paths"]
    assert set(spec["components"]["schemas"]["Alert"]["required"]) == {
        "kind",
        "device",
        "metric",
        "value",
        "threshold",
        "state",
    }
    drift = wait_until(
        lambda: get_json(f"{collector.url}/api/v1/drift?device=pi-1&model=digits&version=1"),
        what="drift",
    )
    assert drift[0]["reference"] is True and drift[0]["samples"] == 150
    fleet = get_json(f"{collector.url}/api/v1/drift?fleet_wide=true")
    assert [(r["scope"], r["device"]) for r in fleet] == [("fleet", None)]
    assert metric(collector, "edgedl_collector_windows_ingested_total") == 5
    assert metric(collector, "edgedl_collector_dead_letters_total") == 0
    assert metric(collector, "edgedl_collector_alerts_open") == 0
    assert metric(collector, "edgedl_collector_ingest_lag_seconds") >= 0


def test_references_are_registered_and_bad_ones_refused(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, sqlite_url))
    url = f"{collector.url}/api/v1/references"
    assert get_json(url) == []
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(url, json={"name": "x"})
    assert r.status_code == 422 and "manifest" in r.json()["error"]
    r = httpx.post(url, content=manifest_file.read_bytes())
    assert r.status_code == 201
    assert r.json() == {"model": "digits", "version": "1", "sha256": "5e" * 32, "statistics": 7}
    assert [(x["model"], x["version"]) for x in get_json(url)] == [("digits", "1")]


def test_pipeline_references_are_registered_kept_and_bad_ones_refused(
    broker: Broker,
    sqlite_url: str,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, sqlite_url))
    url = f"{collector.url}/api/v1/pipeline-references"
    assert get_json(url) == []
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(url, json={"pipeline": "voice", "figures": {"kept_share": "most"}})
    assert r.status_code == 422 and "figures.kept_share" in r.json()["error"]
    profile = {"pipeline": "voice", "counters": {"audio_s": 60}, "figures": {"kept_share": 0.4}}
    r = httpx.post(url, json=profile)
    assert r.status_code == 201 and r.json() == {
        "pipeline": "voice",
        "figures": {"kept_share": 0.4},
    }
    assert [p["pipeline"] for p in get_json(url)] == ["voice"]
    collector.stop()
    # Stored: a collector started later on the same database judges against it.
    again = start_collector(collector_config(broker, sqlite_url))
    assert [p["figures"] for p in get_json(f"{again.url}/api/v1/pipeline-references")] == [
        {"kept_share": 0.4}
    ]


def test_an_empty_heartbeat_window_keeps_the_devices_model(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    from edgedl.telemetry import encode_window, telemetry_topic

    collector = start_collector(collector_config(broker, db_url, windows.fleet))
    publisher.publish(*windows.payload("pi", 0))
    wait_until(lambda: collector.store.count_windows() == 1, what="a window")
    heartbeat = windows.window("pi", 1).model_copy(update={"models": []})
    publisher.publish(telemetry_topic(windows.fleet, "pi"), encode_window(heartbeat)[0])
    wait_until(lambda: collector.store.count_windows() == 2, what="the heartbeat")
    device = get_json(f"{collector.url}/api/v1/devices/pi")
    assert (device["model"], device["version"], device["last_seq"], device["inferences"]) == (
        "digits",
        "1",
        1,
        50,
    )
