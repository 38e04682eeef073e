"""Two collectors on one MQTT 5 shared subscription split the load, with no duplicate."""

from __future__ import annotations

from collections.abc import Callable

from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
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
