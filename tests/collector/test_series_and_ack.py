"""The API behind the dashboard's time range and alert actions: downsampled series over stored
windows, alerts by fleet, and acknowledging an alert with the admin token."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)

from edgedl.collector.service import Collector
from edgedl.telemetry import encode_window, telemetry_topic

TOKEN = "s3cret-admin-token-0123"


def aged_payload(windows: WindowMaker, device: str, seq: int, age_s: float) -> tuple[str, bytes]:
    """A real window of ``device`` that ended ``age_s`` seconds ago."""
    w = windows.window(device, seq, span_s=60)
    end = time.time() - age_s
    w = w.model_copy(update={"window_start": end - 60, "window_end": end})
    return telemetry_topic(w.fleet, w.device), encode_window(w)[0]


def test_series_downsamples_stored_windows_over_the_asked_range(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, db_url, windows.fleet))
    for seq in range(4):  # two days ago
        publisher.publish(*aged_payload(windows, "cam", seq, 2 * 86400 + seq * 60))
    for seq in range(4, 10):  # the last minutes, 4 ms latency
        publisher.publish(*windows.payload("cam", seq, latency_ms=4.0, errors=5))
    wait_until(lambda: collector.store.count_windows("cam") == 10, what="10 windows")
    now = time.time()
    base = f"{collector.url}/api/v1/series?device=cam&fleet={windows.fleet}&to={now + 1}"

    hour = get_json(f"{base}&metric=latency&from={now - 3600}&points=100")
    # No more windows than points: each window is a point, at its end.
    assert [p["windows"] for p in hour["points"]] == [1] * 6 and hour["step_s"] is None
    assert all(1.0 < p["p95_ms"] < 20.0 for p in hour["points"])
    week = get_json(f"{base}&metric=latency&from={now - 7 * 86400}&points=7")
    # One point per day with windows: two days ago (4 windows) and today (6).
    assert [p["windows"] for p in week["points"]] == [4, 6]
    assert week["points"][0]["t"] < now - 86400 < week["points"][-1]["t"]
    errors = get_json(f"{base}&metric=errors&from={now - 3600}&points=1")
    assert [p["error_rate"] for p in errors["points"]] == [0.1]
    speed = get_json(f"{base}&metric=throughput&from={now - 3600}&points=1")
    assert speed["points"][0]["per_s"] == 50 / 60

    for query, needle in [
        ("metric=cpu", "metric must be one of"),
        (f"metric=latency&from={now + 10}", "from must be before to"),
        ("metric=latency&from=yesterday", "from must be a number"),
        ("metric=latency&from=nan", "from must be finite"),
    ]:
        r = httpx.get(f"{base}&{query}", timeout=10)
        assert r.status_code == 400 and needle in r.json()["error"], (query, r.text)


def test_an_alert_is_acknowledged_with_the_admin_token_only(
    broker: Broker,
    db_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        collector_config(
            broker,
            db_url,
            windows.fleet,
            **{"references": [str(manifest_file)], "http.admin_token": TOKEN},
        )
    )
    for seq in range(8):
        publisher.publish(*windows.payload("shifted-cam", seq, shift=0.35))
    alert = wait_until(
        lambda: get_json(f"{collector.url}/api/v1/alerts?state=open&fleet={windows.fleet}"),
        what="an open alert",
    )[0]
    assert get_json(f"{collector.url}/api/v1/alerts?fleet=other-fleet") == []
    # More shifted windows: the alert shows the value judged now beside its opening value.
    for seq in range(8, 10):
        publisher.publish(*windows.payload("shifted-cam", seq, shift=0.5))
    now = wait_until(
        lambda: [
            a
            for a in get_json(f"{collector.url}/api/v1/alerts?state=open")
            if a["id"] == alert["id"] and a["current_at"] and a["current_at"] > alert["opened_at"]
        ],
        what="the open alert's current value",
    )[0]
    assert now["current_value"] > now["threshold"] and now["value"] == alert["value"]
    ack = f"{collector.url}/api/v1/alerts/{alert['id']}/ack"
    assert httpx.post(ack, timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert httpx.post(ack, headers=wrong, timeout=10).status_code == 401
    assert alert["acknowledged_at"] is None
    right = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(ack, headers=right, timeout=10)
    assert r.status_code == 200 and r.json()["acknowledged_at"] > 0
    listed = get_json(f"{collector.url}/api/v1/alerts?state=open")
    assert [a["acknowledged_at"] for a in listed if a["id"] == alert["id"]] == [
        r.json()["acknowledged_at"]
    ]
    missing = httpx.post(f"{collector.url}/api/v1/alerts/999999/ack", headers=right, timeout=10)
    assert missing.status_code == 404
    bad = httpx.post(f"{collector.url}/api/v1/alerts/x/ack", headers=right, timeout=10)
    assert bad.status_code == 400


def test_acknowledging_is_refused_when_no_admin_token_is_configured(
    broker: Broker,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    r = httpx.post(
        f"{collector.url}/api/v1/alerts/1/ack",
        headers={"Authorization": "Bearer anything-at-all-here"},
        timeout=10,
    )
    assert r.status_code == 403 and "admin_token" in r.json()["error"]
