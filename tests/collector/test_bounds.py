"""Hostile but well-formed numbers: refused with a reason, and never a broken API.

A real broker, a real collector, real windows with one field pushed to an extreme. What the
contract's ranges refuse (docs/telemetry.md, "Ranges") becomes a dead letter naming the
field; what a database written before the ranges holds is shown with nulls, never a 500;
and sliding-window totals are exact after a window with huge figures leaves them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_every_page,
    get_json,
    raw_window,
    wait_until,
)
from tests.collector.test_dashboard import ARGS, CHROMIUM

from edgedl.collector.schema import devices as devices_table
from edgedl.collector.schema import windows as windows_table
from edgedl.collector.service import Collector
from edgedl.collector.store import Store
from edgedl.telemetry import DeviceStatus, TelemetryWindow, encode_status, status_topic

LENGTH = "input/image/length"


def _dead_reasons(collector: Collector) -> list[str]:
    return [r["reason"] for r in collector.store.dead_letters(1000)]


def _with_histogram_sum(window: Any, value: float) -> dict[str, Any]:
    model = window.model_dump(exclude_none=True)["models"][0]
    model["profile"]["histograms"]["input/image/mean"]["sum"] = value
    return model


def test_windows_out_of_range_are_dead_letters_and_the_api_keeps_answering(
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
    now = time.time()
    hostile = [
        raw_window(windows.window("pi", 0), window_start=-1e308, window_end=1e308),
        raw_window(
            windows.window("pi", 1), models=[_with_histogram_sum(windows.window("pi", 1), 1.7e308)]
        ),
        raw_window(
            windows.window("pi", 2),
            window_start=now,
            window_end=now + 5e-324,
            models=[
                {
                    **windows.window("pi", 2).model_dump(exclude_none=True)["models"][0],
                    "counts": {"requests": 2**62, "inferences": 2**62},
                }
            ],
        ),
        raw_window(
            windows.window("pi", 3, span_s=0.0), window_end=now + 3600, window_start=now + 3600
        ),
    ]
    publisher.publish_many(hostile)
    publisher.publish(*windows.payload("pi", 4, n=50))
    wait_until(lambda: len(_dead_reasons(collector)) == 4, what="four dead letters")
    reasons = sorted(_dead_reasons(collector))
    assert any(
        r.startswith("window_start: Input should be greater than or equal to 0") for r in reasons
    )
    assert any("sum 1.7e+308 cannot come from these bins" in r for r in reasons)
    assert any(
        "counts.requests: Input should be less than or equal to 4294967295" in r for r in reasons
    )
    assert any(
        "ahead of the collector's clock (ingest.max_clock_skew_s = 300)" in r for r in reasons
    )
    wait_until(lambda: collector.store.count_windows() == 1, what="the one good window")
    wait_until(lambda: get_json(f"{collector.url}/api/v1/drift?device=pi"), what="drift of pi")
    pages = get_every_page(collector, ["pi"])
    assert set(pages.values()) == {200}, pages
    (device,) = get_json(f"{collector.url}/api/v1/devices")
    assert (device["device"], device["inferences"], device["windows"]) == ("pi", 50, 1)
    assert 59.0 < device["window_s"] <= 60.0 and device["online"]


def test_a_status_from_the_future_is_a_dead_letter(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    future = DeviceStatus(fleet=windows.fleet, device="pi", online=True, since=time.time() + 86_400)
    publisher.publish(status_topic(windows.fleet, "pi"), encode_status(future))
    wait_until(lambda: _dead_reasons(collector), what="a dead letter")
    assert "status since is 86400 s ahead" in _dead_reasons(collector)[0]
    assert collector.store.devices() == []


def _old_database(url: str, windows: WindowMaker) -> None:
    """Rows as a collector wrote them before the ranges: inf window length, a 5e-324 s window."""
    good = windows.window("pi", 0)
    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(
            insert(devices_table).values(
                device="pi",
                fleet=windows.fleet,
                first_seen=good.window_end,
                last_seen=good.window_end,
                last_seq=1,
                window_s=math.inf,
                inferences=2**62,
                windows=2,
            )
        )
        base = {"device": "pi", "fleet": windows.fleet, "received_at": good.window_end}
        conn.execute(
            insert(windows_table),
            [
                {
                    **base,
                    "seq": 0,
                    "window_start": -1e308,
                    "window_end": 1e308,
                    "inferences": 0,
                    "payload": b"{}",
                },
                {
                    **base,
                    "seq": 1,
                    "window_start": 0.0,
                    "window_end": 5e-324,
                    "inferences": 2**62,
                    "payload": b"{}",
                },
            ],
        )
    store.close()


def test_stored_figures_no_json_can_carry_are_shown_as_null(
    broker: Broker,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    _old_database(sqlite_url, windows)
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    pages = get_every_page(collector, ["pi"])
    assert set(pages.values()) == {200}, pages
    (device,) = get_json(f"{collector.url}/api/v1/devices")
    assert device["window_s"] is None and device["inferences"] == 2**62
    throughputs = [w["throughput"] for w in get_json(f"{collector.url}/api/v1/windows")]
    assert throughputs == [None, 0.0]


@pytest.mark.slow
def test_the_dashboard_shows_a_device_whose_stored_figures_json_cannot_carry(
    broker: Broker,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    _old_database(sqlite_url, windows)
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        page.goto(collector.url)
        page.wait_for_selector("body[data-loaded=true]", timeout=15_000)
        assert page.locator("#devices tbody td.device-name").all_inner_texts() == ["pi"]
        browser.close()


def _length_window(
    windows: WindowMaker, device: str, seq: int, huge: float = 0.0
) -> TelemetryWindow:
    """A window whose length histogram also holds one value of ``huge`` (when not 0)."""
    window = windows.window(device, seq, n=50)
    if not huge:
        return window
    model = window.models[0]
    assert model.profile is not None
    hist = model.profile.histograms[LENGTH]
    hist.counts[-1] += 1  # the open bin above the reference's lengths
    hist.count += 1
    hist.sum += huge
    hist.sum_sq += huge * huge
    return window


def test_a_window_with_huge_figures_leaves_no_trace_once_evicted(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        collector_config(
            broker,
            sqlite_url,
            windows.fleet,
            references=[str(manifest_file)],
            **{"drift.window_count": 4},
        )
    )
    first = windows.window("pi", 0, n=50).model_dump(exclude_none=True)
    model = first["models"][0]
    for hist in model["profile"]["histograms"].values():
        hist["counts"] = [2**62] * len(hist["counts"])
    model["profile"]["samples"] = 2**62
    sent = [raw_window(windows.window("pi", 0), models=[model])]  # 2**62 per bin: refused
    sent += [raw_window(_length_window(windows, "pi", 1, huge=1e90))]  # within range: stored
    sent += [raw_window(_length_window(windows, "pi", seq)) for seq in range(2, 6)]
    sent += [raw_window(windows.window("pj", seq)) for seq in range(4)]
    publisher.publish_many(sent)

    def settled() -> Any:
        results = get_json(f"{collector.url}/api/v1/drift")
        by = {(r["scope"], r["device"]): r["samples"] for r in results}
        return by == {("device", "pi"): 200, ("device", "pj"): 200, ("fleet", None): 400} and {
            (r["scope"], r["device"]): r for r in results
        }

    by = wait_until(settled, what="pi's sliding window to hold seqs 2-5, pj's 0-3")
    for key, samples in [(("device", "pi"), 200), (("fleet", None), 400)]:
        stats = {s["statistic"]: s for s in by[key]["statistics"]}
        assert by[key]["samples"] == samples
        assert stats[LENGTH]["samples"] == samples
        assert stats[LENGTH]["mean"] == 64.0
