"""Two collectors on one MQTT 5 shared subscription split the load, with no duplicate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def _ingested(c: Collector) -> float:
    return metric(c, "edgedl_collector_windows_ingested_total")


def _duplicates(c: Collector) -> float:
    return metric(c, "edgedl_collector_windows_duplicate_total")


def test_two_collectors_split_the_windows_and_store_each_once(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    first = collector_config(broker, db_url, windows.fleet)
    second = collector_config(broker, db_url, windows.fleet, **{"mqtt.group": first.mqtt.group})
    a, b = start_collector(first), start_collector(second)
    sent = [windows.payload(f"dev-{d}", seq, n=5) for seq in range(30) for d in range(20)]
    publisher.publish_many(sent)
    wait_until(lambda: a.store.count_windows() == 600, what="600 windows stored")
    wait_until(lambda: _ingested(a) + _ingested(b) == 600, what="both collectors' counts")
    keys = a.store.window_keys()
    assert len(keys) == len(set(keys)) == 600
    assert _ingested(a) > 0 and _ingested(b) > 0, (_ingested(a), _ingested(b))
    assert _duplicates(a) == _duplicates(b) == 0
    devices = {d["device"]: d for d in a.store.devices()}
    assert len(devices) == 20 and all(d["inferences"] == 30 * 5 for d in devices.values())


def test_both_collectors_judge_each_devices_whole_sliding_window(
    broker: Broker,
    db_url: str,
    manifest_file: Any,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    """Each collector receives part of a device's windows; it reads the rest from the shared
    database, so both judge all of them, and an alert is raised once, not twice."""
    first = collector_config(broker, db_url, windows.fleet, references=[str(manifest_file)])
    second = collector_config(
        broker,
        db_url,
        windows.fleet,
        references=[str(manifest_file)],
        **{"mqtt.group": first.mqtt.group},
    )
    a, b = start_collector(first), start_collector(second)
    publisher.publish_many([windows.payload("cam", seq, shift=0.3) for seq in range(10)])
    wait_until(lambda: a.store.count_windows() == 10, what="10 windows")
    assert 0 < metric(a, "edgedl_collector_windows_ingested_total") < 10

    def samples(c: Collector) -> int:
        results = get_json(f"{c.url}/api/v1/drift?device=cam")
        return int(results[0]["samples"]) if results else 0

    wait_until(lambda: samples(a) == samples(b) == 10 * 50, what="both see 500 samples")
    alerts = [
        x for x in get_json(f"{a.url}/api/v1/alerts") if x["metric"] == "psi:input/image/mean"
    ]
    # One alert per scope, though two collectors judged the same numbers.
    assert sorted((x["scope"], x["device"] or "") for x in alerts) == [
        ("device", "cam"),
        ("fleet", ""),
    ]
