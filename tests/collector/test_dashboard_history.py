"""The dashboard in headless Chromium: the time range, alert history, acknowledging an alert
and the fleet filter (screenshots under the test's tmp dir)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)
from tests.collector.test_dashboard import ARGS, CHROMIUM
from tests.collector.test_series_and_ack import TOKEN, aged_payload

from edgedl.bundle import Manifest
from edgedl.collector.service import Collector


def _alerts(collector: Collector, state: str) -> list[dict[str, Any]]:
    return list(get_json(f"{collector.url}/api/v1/alerts?state={state}"))


@pytest.mark.slow
def test_range_history_acknowledge_and_fleet_filter_in_chromium(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    reference_manifest: Manifest,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    other = WindowMaker(reference_manifest, f"{windows.fleet}-b")
    collector = start_collector(
        collector_config(
            broker,
            sqlite_url,
            **{
                "mqtt.fleets": [windows.fleet, other.fleet],
                "references": [str(manifest_file)],
                "http.admin_token": TOKEN,
                "alerts.offline_after_windows": 2,
            },
        )
    )
    # A device silent for two of its 0.5 s windows goes offline, then comes back: resolved.
    publisher.publish(*windows.payload("flaky-cam", 0, span_s=0.5))
    wait_until(lambda: _alerts(collector, "open"), what="an offline alert on flaky-cam")
    # It comes back sending a window every 0.25 s, as a live device does: one window alone
    # could be a second old by the collector's next once-a-second offline check on a busy
    # machine, which is silence past the 1 s bound again.
    back = {"seq": 1, "sent": 0.0}

    def comes_back() -> bool:
        if time.monotonic() - back["sent"] >= 0.25:
            publisher.publish(*windows.payload("flaky-cam", back["seq"], span_s=0.5))
            back["seq"] += 1
            back["sent"] = time.monotonic()
        return bool(_alerts(collector, "resolved"))

    wait_until(comes_back, what="the offline alert resolved")
    # garage-cam: four windows two days ago, eight now, shifted (a drift alert stays open).
    for seq in range(4):
        publisher.publish(*aged_payload(windows, "garage-cam", seq, 2 * 86400 - seq * 60))
    for seq in range(4, 12):
        publisher.publish(*windows.payload("garage-cam", seq, shift=0.35))
    for seq in range(3):
        publisher.publish(*other.payload("porch-cam", seq))
    publisher.publish(f"edgedl/v1/{windows.fleet}/garage-cam/telemetry", b"not a window")
    wait_until(
        lambda: [a for a in _alerts(collector, "open") if a["device"] == "garage-cam"],
        what="a drift alert on garage-cam",
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2600})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(collector.url)
        page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        page.locator("#devices tbody tr[data-device=garage-cam]").click()
        page.wait_for_function(
            "document.querySelector('#device-name').textContent === 'garage-cam'"
        )
        chart = page.locator("#latency-chart")
        page.wait_for_selector("#latency-chart[data-windows='8'] svg path.series", state="attached")
        # The legend has the series' colours, not the stylesheet's grey.
        # (Waited for rather than read once: the page's refresh redraws the chart, and a legend
        # read while it is being replaced has no computed style.)
        page.wait_for_function(
            "() => { const e = document.querySelector("
            "'#latency-chart svg text.legend[data-series=p95]');"
            " return e !== null && getComputedStyle(e).fill === 'rgb(230, 126, 34)'; }",
            timeout=10_000,
        )
        # Hovering shows the values at that point.
        chart.locator("rect.hover-area").hover()
        assert "p95" in (chart.locator("text.hover-text").text_content() or "")
        # The unit sits above the plot, clear of the top tick.
        boxes = chart.evaluate(
            "c => [c.querySelector('text.axis-label'), [...c.querySelectorAll('text.tick')]"
            ".find(t => t.getAttribute('text-anchor') === 'end')]"
            ".map(t => t.getBoundingClientRect().bottom)"
        )
        top_ticks = chart.evaluate(
            "c => Math.min(...[...c.querySelectorAll('text.tick')].map(t => t.getBoundingClientRect().top))"
        )
        assert boxes[0] <= top_ticks, (boxes, top_ticks)
        # Drift over time: a line per statistic and the PSI alert bound.
        history = page.locator("#drift-history svg")
        assert history.locator("text.legend").count() >= 7
        assert history.locator("line.threshold").get_attribute("data-threshold") == "0.2"
        # The dead letter is listed.
        page.wait_for_selector("#dead-letters tbody tr")
        assert "garage-cam" in page.locator("#dead-letters tbody").inner_text()
        page.screenshot(path=str(tmp_path / "range-1h.png"), full_page=True)

        # 7 days: the windows of two days ago are drawn too.
        page.select_option("#range", "604800")
        page.wait_for_selector("#latency-chart[data-windows='12']")
        chart.screenshot(path=str(tmp_path / "latency-7d.png"))

        # Alert history: the resolved offline alert with its resolve time.
        resolved = page.locator("#alert-history tbody tr[data-state=resolved]")
        assert "flaky-cam" in resolved.first.inner_text()
        assert resolved.first.locator("td.resolved-at").inner_text() not in ("", "–")

        # Acknowledge: refused without the token, done with it.
        button = page.locator("#alerts tbody button.ack").first
        button.click()
        page.wait_for_selector("#ack-result[data-status='401']")
        page.fill("#admin-token", TOKEN)
        page.locator("#alerts tbody button.ack").first.click()
        page.wait_for_selector("#ack-result[data-status='200']")
        page.wait_for_function(
            "[...document.querySelectorAll('#alerts tbody td.acked')]"
            ".some(td => td.textContent.includes('ago'))"
        )
        assert any(a["acknowledged_at"] for a in _alerts(collector, "open"))
        page.screenshot(path=str(tmp_path / "acknowledged.png"), full_page=True)
        assert [e for e in errors if "status of 401" not in e] == []  # 401: the refused ack

        # The fleet filter: only the other fleet's device and none of the first's alerts.
        page.select_option("#fleet-filter", other.fleet)
        page.wait_for_function(
            "[...document.querySelectorAll('#devices tbody td.device-name')]"
            ".map(td => td.textContent).join() === 'porch-cam'"
        )
        assert page.locator("#alerts tbody tr").count() == 0
        assert page.locator("#alert-history tbody tr").count() == 0
        page.screenshot(path=str(tmp_path / "fleet-filter.png"), full_page=True)
        browser.close()
    print(f"dashboard screenshots: {tmp_path}")
