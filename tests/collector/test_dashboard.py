"""The dashboard in headless Chromium: devices, a drift chart with its threshold, an alert."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)

from edgedl.collector.service import Collector

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.mark.slow
def test_the_dashboard_shows_devices_drift_and_alerts(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    # The devices' "kws" pipeline was validated keeping half of its audio, 10 segments a minute.
    profile = tmp_path / "kws-profile.json"
    profile.write_text(json.dumps({"pipeline": "kws", "counters": {},
                                   "figures": {"kept_share": 0.5, "segments_per_min": 10}}))  # fmt: skip
    collector = start_collector(
        collector_config(
            broker,
            sqlite_url,
            windows.fleet,
            references=[str(manifest_file)],
            pipeline_references=[str(profile)],
        )
    )
    as_validated = {"audio_s": 60.0, "kept_s": 30.0, "segments": 10.0}
    noisy = {"audio_s": 60.0, "kept_s": 57.0, "segments": 2.0}  # a new noise source
    for seq in range(8):
        publisher.publish(*windows.payload("kitchen-cam", seq, span_s=60, health=as_validated))
        publisher.publish(
            *windows.payload("garage-cam", seq, shift=0.12, latency_ms=4.0, span_s=60, health=noisy)
        )
    wait_until(
        lambda: [
            a
            for a in get_json(f"{collector.url}/api/v1/alerts?state=open")
            if a["device"] == "garage-cam"
        ],
        what="a drift alert on garage-cam",
    )
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.on(
            "request", lambda r: None if r.url.startswith(collector.url) else outside.append(r.url)
        )
        page.goto(collector.url)
        page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        page.wait_for_selector("#drift-chart svg rect.bar", timeout=15_000)
        page.wait_for_selector("#latency-chart svg path.series", timeout=15_000)
        devices = page.locator("#devices tbody td.device-name").all_inner_texts()
        assert sorted(devices) == ["garage-cam", "kitchen-cam"]
        assert "2 online" in page.locator("#summary").inner_text()
        alert_rows = page.locator("#alerts tbody tr").all_inner_texts()
        assert any("garage-cam" in r and "psi:input/image/mean" in r for r in alert_rows), (
            alert_rows
        )
        # The device with the alert is shown: its drift bars and the PSI bounds drawn over them.
        assert page.locator("#device-name").inner_text() == "garage-cam"
        bars = page.locator("#drift-chart svg rect.bar")
        assert bars.count() >= 7
        thresholds = page.locator("#drift-chart svg line.threshold")
        assert sorted(float(t.get_attribute("data-threshold") or 0) for t in thresholds.all()) == [
            0.1,
            0.2,
        ]
        assert "alert" in page.locator("#drift-table").inner_text()
        assert page.locator("#pipelines tbody tr").count() == 1
        # The stage-health panel of the pipeline: the VAD keeps far more than its reference.
        page.wait_for_selector("#stage-health .stage-health[data-pipeline=kws]", timeout=15_000)
        kept = page.locator("#stage-health tr[data-figure=kept_share]")
        assert kept.get_attribute("class") == "alert"
        assert "0.95" in kept.inner_text() and "0.5" in kept.inner_text()
        assert page.locator("#fleet-drift .drift-chart svg rect.bar").count() >= 7
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        # The page refreshes by itself: a device that appears now shows up without a reload.
        publisher.publish(*windows.payload("porch-cam", 0))
        page.wait_for_selector("#devices tbody tr[data-device=porch-cam]", timeout=15_000)
        # Click the other device: its charts replace the first one's.
        page.locator("#devices tbody tr[data-device=kitchen-cam]").click()
        page.wait_for_function(
            "document.querySelector('#device-name').textContent === 'kitchen-cam'"
        )
        browser.close()
    print(f"dashboard screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    assert outside == []
