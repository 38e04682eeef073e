"""Property test: extreme but well-formed windows and statuses never hurt a real collector.

Hypothesis takes a real window (or status) and puts extreme JSON numbers in up to four of
its fields: the largest and smallest floats, subnormals, 2**62 and 2**64, NaN and infinity
(as Python's json writes them), any float or integer. Each message goes through a real
collector's ingest path (validation, storage, the drift monitor); every fourth also over
MQTT. Meanwhile two real devices report. Afterwards the collector is still up, every GET page
of the API and the dashboard answers 200, every hostile message is either stored or a dead
letter, and the real devices' counts are exact. Derandomized: the same examples every run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_every_page,
    get_json,
    wait_until,
)
from tests.telemetry_fuzz import MUTATIONS, STATUS_MUTATIONS, set_path

from edgedl.collector.ingest import Message
from edgedl.collector.service import Collector
from edgedl.errors import TelemetryError
from edgedl.telemetry import (
    MAX_COUNT,
    MAX_TIMESTAMP,
    MAX_VALUE,
    MAX_WINDOW_S,
    DeviceStatus,
    decode_window,
    status_topic,
    telemetry_topic,
)

EXAMPLES = 400
REAL_DEVICES = ("real-0", "real-1")
REAL_N = 40  # inferences per real window


def test_extreme_numbers_never_break_the_collector(
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
            **{"drift.window_count": 4, "drift.min_samples": 50},
        )
    )
    sent: list[str] = []  # fuzz devices, one message each
    real_seq = iter(range(10_000))

    def report_real() -> None:
        seq = next(real_seq)
        for device in REAL_DEVICES:
            publisher.publish(*windows.payload(device, seq, n=REAL_N))

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutations=MUTATIONS, status=STATUS_MUTATIONS, as_status=st.booleans())
    def feed(
        mutations: list[tuple[tuple[Any, ...], Any]],
        status: tuple[tuple[Any, ...], Any],
        as_status: bool,
    ) -> None:
        device = f"fuzz-{len(sent)}"
        if as_status:
            body = DeviceStatus(
                fleet=windows.fleet, device=device, online=True, since=time.time()
            ).model_dump(exclude_none=True)
            set_path(body, *status)
            topic = status_topic(windows.fleet, device)
        else:
            body = windows.window(device, 0, n=20, seed=len(sent)).model_dump(exclude_none=True)
            for path, value in mutations:
                set_path(body, path, value)
            topic = telemetry_topic(windows.fleet, device)
        payload = json.dumps(body).encode()  # NaN and Infinity as Python writes them
        if len(sent) % 4 == 0:
            publisher.publish(topic, payload)
        else:
            collector.ingestor.ingest([Message(topic, payload)])
        sent.append(device)
        if len(sent) % 40 == 0:
            report_real()

    report_real()
    feed()
    report_real()

    reports = 2 + EXAMPLES // 40

    def accounted() -> bool:
        rows = {d["device"]: d for d in collector.store.devices()}
        handled = sum(1 for d in sent if d in rows) + collector.store.count_dead_letters()
        real = [rows.get(d, {}).get("windows") for d in REAL_DEVICES]
        return handled == len(sent) and real == [reports] * len(REAL_DEVICES)

    wait_until(accounted, timeout=60, what="every message stored or dead-lettered")
    assert get_json(f"{collector.url}/healthz")["mqtt_connected"] is True
    stored = {d["device"] for d in collector.store.devices()}
    pages = get_every_page(collector, [*REAL_DEVICES, *[d for d in sent if d in stored][:20]])
    assert set(pages.values()) == {200}, {p: s for p, s in pages.items() if s != 200}
    real = {d["device"]: d for d in get_json(f"{collector.url}/api/v1/devices")}
    for device in REAL_DEVICES:
        assert real[device]["inferences"] == reports * REAL_N
        assert real[device]["windows"] == reports
    wait_until(
        lambda: (
            [r["samples"] for r in get_json(f"{collector.url}/api/v1/drift?device=real-0")]
            == [4 * REAL_N]
        ),
        what="real-0's sliding window: its newest 4 windows, exactly",
    )
    assert collector.store.count_dead_letters() > EXAMPLES // 4


def _numbers(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_a_window_the_contract_accepts_holds_only_bounded_figures(windows: WindowMaker) -> None:
    """What decodes stays within docs/telemetry.md's ranges, so no sum of it overflows."""
    base = windows.window("pi", 0, n=20).model_dump(exclude_none=True)

    @settings(max_examples=600, derandomize=True, database=None, deadline=None)
    @given(mutations=MUTATIONS)
    def check(mutations: list[tuple[tuple[Any, ...], Any]]) -> None:
        body = json.loads(json.dumps(base))
        for path, value in mutations:
            set_path(body, path, value)
        try:
            w = decode_window(json.dumps(body).encode())
        except TelemetryError:
            return
        assert 0.0 <= w.window_start <= w.window_end <= MAX_TIMESTAMP
        assert w.window_end - w.window_start <= MAX_WINDOW_S
        assert all(math.isfinite(x) for x in _numbers(w.model_dump()))
        for m in w.models:
            assert max(m.counts.model_dump().values()) <= MAX_COUNT
            hists = [m.latency_ms, m.batch_size]
            hists += m.profile.histograms.values() if m.profile else []
            for h in hists:
                assert max(h.counts) <= MAX_COUNT and h.count == sum(h.counts)
                assert abs(h.sum) <= h.count * MAX_VALUE * 1.001
                assert 0.0 <= h.sum_sq * (1 - 1e-6) <= h.count * MAX_VALUE * MAX_VALUE
                if h.count:  # the mean lies within what the bins allow
                    assert -MAX_VALUE * 1.001 <= h.sum / h.count <= MAX_VALUE * 1.001

    check()
