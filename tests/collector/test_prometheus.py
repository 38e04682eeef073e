"""Per-device and per-fleet drift and health on /metrics, and the Grafana dashboard's queries
run by a real Prometheus server scraping a real collector."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    get_json_text,
    wait_until,
)
from tests.ports import free_port

from edgedl.collector.service import Collector

DASHBOARD = Path(__file__).parents[2] / "collector/edgedl/collector/grafana/edgedl-fleet.json"
Sample = tuple[str, dict[str, str], float]


def _samples(collector: Collector) -> list[Sample]:
    text = get_json_text(f"{collector.url}/metrics")
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [v for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert len(found) == 1, f"{name} {labels}: {len(found)} series"
    return found[0]


def _drifting_fleet(
    broker: Broker,
    db: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
    **overrides: Any,
) -> Collector:
    """A collector holding a steady device and a shifted one (with errors), drift alert open."""
    config = collector_config(
        broker, db, windows.fleet, **{"references": [str(manifest_file)], **overrides}
    )
    collector = start_collector(config)
    for seq in range(8):
        publisher.publish(*windows.payload("steady-cam", seq))
        publisher.publish(*windows.payload("shifted-cam", seq, shift=0.35, errors=5))
    wait_until(
        lambda: any(
            a["device"] == "shifted-cam" and a["metric"] == "psi:input/image/mean"
            for a in get_json(f"{collector.url}/api/v1/alerts?state=open")
        ),
        what="a drift alert on shifted-cam",
    )
    wait_until(
        lambda: len(get_json(f"{collector.url}/api/v1/drift?fleet={windows.fleet}")) == 3,
        what="both devices and the fleet evaluated",
    )
    return collector


def test_metrics_show_drift_health_and_alerts_per_device_and_fleet(
    broker: Broker,
    db_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = _drifting_fleet(broker, db_url, manifest_file, publisher, windows, start_collector)
    s = _samples(collector)
    fleet = windows.fleet
    ids = {"fleet": fleet, "model": "digits", "version": "1"}
    for cam in ("steady-cam", "shifted-cam"):
        assert _value(s, "edgedl_device_online", device=cam, **ids) == 1
        assert _value(s, "edgedl_device_windows_stored", device=cam, **ids) == 8
        assert _value(s, "edgedl_device_windows_missing", device=cam, **ids) == 0
        assert _value(s, "edgedl_device_last_window_age_seconds", device=cam, **ids) < 600
    mean = {"statistic": "input/image/mean", "test": "psi", **ids}
    shifted = dict(scope="device", device="shifted-cam", **mean)
    assert _value(s, "edgedl_drift_detected", **shifted) == 1
    assert _value(s, "edgedl_drift_detected", scope="device", device="steady-cam", **mean) == 0
    assert _value(s, "edgedl_drift_effect", **shifted) > _value(
        s, "edgedl_drift_min_effect", **shifted
    )
    # The fleet total (both devices) drifts less than the shifted device alone.
    fleet_psi = _value(s, "edgedl_drift_effect", scope="fleet", **mean)
    assert 0 < fleet_psi < _value(s, "edgedl_drift_effect", **shifted)
    assert _value(s, "edgedl_error_rate", scope="device", device="shifted-cam", **ids) == 0.1
    assert _value(s, "edgedl_error_rate", scope="device", device="steady-cam", **ids) == 0
    assert 0 < _value(s, "edgedl_latency_p95_seconds", scope="device", device="steady-cam") < 1
    cusum = {"device": "shifted-cam", "statistic": "input/image/mean", **ids}
    assert _value(s, "edgedl_drift_cusum_threshold", **cusum) > 0
    assert (
        _value(
            s,
            "edgedl_alert_open",
            kind="drift",
            scope="device",
            device="shifted-cam",
            metric="psi:input/image/mean",
        )
        == 1
    )
    assert not [lab for n, lab, _ in s if n == "edgedl_alert_open" and "steady" in lab["device"]]
    assert _value(s, "edgedl_collector_metrics_series_dropped") == 0


def test_device_drift_series_beyond_the_bound_are_left_out_and_counted(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = _drifting_fleet(
        broker,
        sqlite_url,
        manifest_file,
        publisher,
        windows,
        start_collector,
        **{"http.metrics_max_series": 0},
    )
    s = _samples(collector)
    drift = [lab for n, lab, _ in s if n == "edgedl_drift_effect"]
    assert drift and all(lab["scope"] == "fleet" for lab in drift)
    assert _value(s, "edgedl_collector_metrics_series_dropped") > 0
    # Health is never cut.
    assert _value(s, "edgedl_device_online", device="shifted-cam") == 1


# ---------------------------------------------------------------- Prometheus + Grafana


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        print("prometheus is not installed (make sysdeps installs Debian's): test skipped")
        pytest.skip("prometheus is not installed")
    return found


class Prometheus:
    """A real Prometheus server scraping one target every second."""

    def __init__(self, binary: str, target: str, tmp: Path) -> None:
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: edgedl\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tmp / "prometheus.log"
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query (the API's error as a test failure)."""
        try:
            r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        except httpx.TransportError:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            return []
        if r.status_code == 503:  # starting: its storage is not open yet
            return []
        body = r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture
def prometheus_for(
    prometheus_binary: str, tmp_path: Path
) -> Iterator[Callable[[Collector], Prometheus]]:
    servers: list[Prometheus] = []

    def start(collector: Collector) -> Prometheus:
        server = Prometheus(prometheus_binary, collector.url.removeprefix("http://"), tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _panel_queries(fleet: str) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, its variables filled in."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (
            panel["title"],
            target["expr"].replace("$fleet", fleet).replace("$__rate_interval", "1m"),
        )
        for panel in dash["panels"]
        for target in panel["targets"]
    ]


def test_every_grafana_panel_query_returns_data_from_a_real_prometheus(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
    prometheus_for: Callable[[Collector], Prometheus],
) -> None:
    collector = _drifting_fleet(
        broker, sqlite_url, manifest_file, publisher, windows, start_collector
    )
    prom = prometheus_for(collector)
    wait_until(lambda: prom.query('up{job="edgedl"} == 1'), timeout=60, what="a successful scrape")
    queries = _panel_queries(windows.fleet)
    assert len(queries) >= 12
    for title, expr in queries:
        result = wait_until(lambda e=expr: prom.query(e), timeout=30, what=f"{title}: {expr}")
        if "fleet" in expr and "$" not in expr:
            assert {r["metric"].get("fleet", windows.fleet) for r in result} == {windows.fleet}
    # The fleet variable lists the fleet (Grafana's label_values over the same series).
    labels = httpx.get(f"{prom.url}/api/v1/label/fleet/values", timeout=10).json()["data"]
    assert windows.fleet in labels
