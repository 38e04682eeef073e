"""Drift, latency and offline alerts: raised once, announced on MQTT and a webhook, resolved."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)

from edgedl.collector.service import Collector
from edgedl.telemetry import alerts_topic


class AlertListener:
    """Records what arrives on a fleet's alerts topic."""

    def __init__(self, broker: Broker, fleet: str) -> None:
        self.messages: list[dict[str, Any]] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"l-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5
        )
        self.client.on_message = lambda _c, _u, m: self.messages.append(json.loads(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(alerts_topic(fleet), qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Webhook:
    """A real HTTP server that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def listener(broker: Broker, windows: WindowMaker) -> Iterator[AlertListener]:
    lis = AlertListener(broker, windows.fleet)
    yield lis
    lis.close()


def _alerts(collector: Collector, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return list(get_json(f"{collector.url}/api/v1/alerts?{qs}"))


def test_shifted_inputs_raise_one_drift_alert_and_unshifted_ones_none(
    broker: Broker,
    db_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    listener: AlertListener,
    webhook: Webhook,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(
        broker,
        db_url,
        windows.fleet,
        **{"alerts.webhook": webhook.url, "references": [str(manifest_file)]},
    )
    collector = start_collector(config)
    for seq in range(8):
        publisher.publish(*windows.payload("steady-cam", seq))
        publisher.publish(*windows.payload("shifted-cam", seq, shift=0.35))

    def drift_alerts() -> list[dict[str, Any]]:
        return [a for a in _alerts(collector, state="open") if a["kind"] == "drift"]

    wait_until(
        lambda: any(
            a["metric"] == "psi:input/image/mean" and a["device"] == "shifted-cam"
            for a in drift_alerts()
        ),
        what="a PSI drift alert on shifted-cam",
    )
    # Both evaluate with the same number of windows; only the shifted one drifted.
    wait_until(
        lambda: len(get_json(f"{collector.url}/api/v1/drift?device=steady-cam")) == 1,
        what="steady-cam evaluated",
    )
    steady = get_json(f"{collector.url}/api/v1/drift?device=steady-cam")[0]
    assert steady["statistics"] and all(s["judged"] for s in steady["statistics"])
    # No figure alerts on unchanged data ("watch" marks a test that is significant at 1%).
    assert all(s["status"] in ("ok", "watch") for s in steady["statistics"]), steady

    alerts = drift_alerts()
    assert not [a for a in alerts if a["device"] == "steady-cam"]
    psi_alert = next(
        a for a in alerts if a["metric"] == "psi:input/image/mean" and a["device"] == "shifted-cam"
    )
    assert psi_alert["value"] > psi_alert["threshold"] == 0.2
    assert (
        psi_alert["model"] == "digits"
        and psi_alert["version"] == "1"
        and psi_alert["state"] == "open"
    )
    # More shifted windows keep the alert open without raising it again.
    for seq in range(8, 12):
        publisher.publish(*windows.payload("shifted-cam", seq, shift=0.35))
    wait_until(lambda: collector.store.count_windows("shifted-cam") == 12, what="12 windows")
    wait_until(
        lambda: any(
            m["metric"] == "psi:input/image/mean" and m["device"] == "shifted-cam"
            for m in listener.messages
        ),
        what="alert on MQTT",
    )
    wait_until(
        lambda: any(m["metric"] == "psi:input/image/mean" for m in webhook.received),
        what="alert at the webhook",
    )
    same = [
        a
        for a in _alerts(collector)
        if a["metric"] == "psi:input/image/mean" and a["device"] == "shifted-cam"
    ]
    assert len(same) == 1
    # Fleet-wide: the fleet total of both devices is judged too.
    fleet_results = get_json(f"{collector.url}/api/v1/drift?scope=fleet")
    assert fleet_results[0]["fleet"] == windows.fleet and fleet_results[0]["samples"] > 0


def test_a_drift_alert_resolves_when_the_data_comes_back(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    listener: AlertListener,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(
        broker, sqlite_url, windows.fleet, **{"drift.window_count": 6, "drift.fleet": False}
    )
    collector = start_collector(config)
    import httpx

    r = httpx.post(f"{collector.url}/api/v1/references", content=manifest_file.read_bytes())
    assert r.status_code == 201 and r.json()["sha256"] == "5e" * 32
    for seq in range(6):
        publisher.publish(*windows.payload("cam", seq, shift=0.35))
    wait_until(
        lambda: any(
            a["metric"] == "psi:input/image/mean" for a in _alerts(collector, state="open")
        ),
        what="drift alert",
    )
    # The CUSUM of the image mean saw the shift too (steps of 200 samples: 4 windows).
    wait_until(
        lambda: any(
            a["metric"] == "cusum:input/image/mean" for a in _alerts(collector, state="open")
        ),
        what="sequential drift alert",
    )
    # Its score sits at 1.5x its alarm level; unshifted steps bring it back under (each by
    # about 1 on average, so 15 steps leave a wide margin).
    for seq in range(6, 66):
        publisher.publish(*windows.payload("cam", seq))
    resolved = wait_until(
        lambda: [
            a for a in _alerts(collector, state="resolved") if a["metric"] == "psi:input/image/mean"
        ],
        what="the alert resolved once the sliding window holds unshifted data only",
    )
    assert resolved[0]["resolved_at"] >= resolved[0]["opened_at"]
    wait_until(
        lambda: not [a for a in _alerts(collector, state="open") if a["kind"] == "drift"],
        what="every drift alert resolved (the CUSUM's too) after 60 unshifted windows",
    )
    wait_until(
        lambda: [m for m in listener.messages if m["state"] == "resolved"],
        what="the resolution on MQTT",
    )


def test_small_samples_do_not_raise_alerts(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(
        broker,
        sqlite_url,
        windows.fleet,
        **{"references": [str(manifest_file)], "drift.min_samples": 200},
    )
    collector = start_collector(config)
    for seq in range(3):
        publisher.publish(*windows.payload("tiny", seq, n=20, shift=0.6))  # 60 samples, far off
    result = wait_until(
        lambda: (
            (r := get_json(f"{collector.url}/api/v1/drift?device=tiny"))
            and r[0]["samples"] == 60
            and r[0]
        ),
        what="tiny evaluated",
    )
    mean = next(s for s in result["statistics"] if s["statistic"] == "input/image/mean")
    assert mean["psi"] > 0.2 and mean["judged"] is False
    collector.monitor.tick()
    assert not [a for a in _alerts(collector) if a["kind"] == "drift"]


def test_a_silent_device_raises_an_offline_alert_that_resolves_when_it_returns(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(
        broker, sqlite_url, windows.fleet, **{"alerts.offline_after_windows": 2}
    )
    collector = start_collector(config)
    publisher.publish(*windows.payload("quiet", 0, span_s=0.5))  # 0.5 s windows: offline after 1 s
    publisher.publish(*windows.payload("chatty", 0, span_s=60))
    offline = wait_until(
        lambda: [a for a in _alerts(collector, state="open") if a["kind"] == "offline"],
        what="an offline alert",
    )
    assert [a["device"] for a in offline] == ["quiet"]
    assert offline[0]["metric"] == "silence_s" and offline[0]["threshold"] == pytest.approx(1.0)
    devices = {d["device"]: d for d in get_json(f"{collector.url}/api/v1/devices")}
    assert devices["quiet"]["online"] is False and devices["chatty"]["online"] is True
    publisher.publish(*windows.payload("quiet", 1, span_s=60))
    wait_until(
        lambda: [a for a in _alerts(collector, state="resolved") if a["kind"] == "offline"],
        what="the offline alert resolved",
    )


def test_latency_against_the_devices_own_baseline(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(
        broker,
        sqlite_url,
        windows.fleet,
        **{
            "drift.baseline_windows": 4,
            "drift.window_count": 4,
            "drift.latency_p95_ratio_alert": 2.0,
        },
    )
    collector = start_collector(config)
    for seq in range(4):
        publisher.publish(*windows.payload("slowing", seq, latency_ms=2.0))
    wait_until(lambda: get_json(f"{collector.url}/api/v1/drift?device=slowing"), what="evaluated")
    assert not [a for a in _alerts(collector) if a["kind"] == "latency"]
    for seq in range(4, 8):
        publisher.publish(*windows.payload("slowing", seq, latency_ms=12.0))
    alert = wait_until(
        lambda: [a for a in _alerts(collector, state="open") if a["kind"] == "latency"],
        what="a latency alert",
    )[0]
    assert alert["device"] == "slowing" and alert["metric"] == "latency_p95_ratio"
    assert alert["value"] > 2.0
    latency = get_json(f"{collector.url}/api/v1/drift?device=slowing")[0]["latency"]
    assert latency["p95_ms"] > 2 * latency["baseline_p95_ms"]


def test_errors_raise_an_errors_alert(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    for seq in range(5):
        publisher.publish(*windows.payload("flaky", seq, errors=10))  # 10 of 50 requests fail
    alert = wait_until(
        lambda: [a for a in _alerts(collector, state="open") if a["kind"] == "errors"],
        what="an errors alert",
    )[0]
    assert alert["metric"] == "error_rate" and alert["value"] == pytest.approx(0.2)


def test_a_restarted_collector_picks_up_each_devices_sliding_window(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(broker, sqlite_url, windows.fleet, references=[str(manifest_file)])
    first = start_collector(config)
    for seq in range(6):
        publisher.publish(*windows.payload("cam", seq))
    wait_until(lambda: first.store.count_windows() == 6, what="6 windows")
    first.stop()
    second = start_collector(config)
    publisher.publish(*windows.payload("cam", 6))
    result = wait_until(
        lambda: (r := get_json(f"{second.url}/api/v1/drift?device=cam")) and r[0],
        what="cam evaluated after the restart",
    )
    assert result["samples"] == 7 * 50  # six windows from before the restart, one after


def test_retire_resolves_the_alerts_of_a_replaced_version_and_nothing_else(
    sqlite_url: str,
) -> None:
    """What a completed rollout does (edgedl.collector.fleet.waves): the replaced version's
    drift and accuracy alerts on its devices, and fleet-wide when no other device runs it, are
    resolved; other devices, versions, models and kinds stay open."""
    from edgedl.collector.alerts import AlertBook, AlertSubject
    from edgedl.collector.store import Store

    store = Store(sqlite_url)
    announced: list[dict[str, Any]] = []
    book = AlertBook(store, on_change=announced.append)

    def raise_(kind: str, scope: str, device: str | None, model: str, version: str) -> None:
        subject = AlertSubject(kind, scope, "plant", device, model, version, f"{kind}-metric")
        book.observe(subject, 0.5, 0.2, breached=True, now=100.0)

    raise_("drift", "device", "pi-1", "digits", "1")
    raise_("accuracy", "device", "pi-1", "digits", "1")
    raise_("drift", "fleet", None, "digits", "1")
    raise_("drift", "device", "pi-2", "digits", "1")  # not in the rollout
    raise_("drift", "device", "pi-1", "digits", "2")  # the new version
    raise_("drift", "device", "pi-1", "kws", "1")  # another model
    raise_("offline", "device", "pi-1", "digits", "1")  # not about what the version answers
    announced.clear()

    done = book.retire("plant", "digits", {"pi-1": "1"}, fleet_versions=set(), now=200.0)

    assert sorted((a["kind"], a["scope"], a["device"]) for a in done) == [
        ("accuracy", "device", "pi-1"),
        ("drift", "device", "pi-1"),
    ]
    assert [a["state"] for a in announced] == ["resolved", "resolved"]
    still = {(a["kind"], a["scope"], a["device"], a["model"], a["version"])
             for a in store.alerts(state="open")}  # fmt: skip
    assert still == {
        ("drift", "fleet", None, "digits", "1"),  # pi-2 still runs version 1
        ("drift", "device", "pi-2", "digits", "1"),
        ("drift", "device", "pi-1", "digits", "2"),
        ("drift", "device", "pi-1", "kws", "1"),
        ("offline", "device", "pi-1", "digits", "1"),
    }
    assert (
        book.retire("plant", "digits", {}, fleet_versions={"1"}, now=300.0)[0]["scope"] == "fleet"
    )
    # A breach after retirement opens a new alert (the version answers again).
    raise_("drift", "device", "pi-1", "digits", "1")
    assert len([a for a in store.alerts(state="open") if a["device"] == "pi-1"]) == 4
