"""A device is (fleet, device) and has lives (spool epochs): windows over a real broker.

Each test publishes real windows through Mosquitto to an in-process collector and reads what
an operator would read: the API's devices, windows and dead letters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

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
from edgedl.telemetry import DeviceStatus, encode_status, encode_window, status_topic

FAR = 2**63 - 2


def lived(windows: WindowMaker, device: str, epoch: str, seq: int, **kw: Any) -> tuple[str, bytes]:
    """A real window of ``device`` in spool ``epoch``: (topic, payload)."""
    w = windows.window(device, seq, **kw).model_copy(update={"epoch": epoch})
    return f"edgedl/v1/{w.fleet}/{device}/telemetry", encode_window(w)[0]


def device_row(collector: Collector, fleet: str, device: str) -> dict[str, Any]:
    """The device as the API shows it ({} while it has not reported yet)."""
    r = httpx.get(f"{collector.url}/api/v1/devices/{fleet}/{device}", timeout=10)
    if r.status_code == 404:
        return {}
    r.raise_for_status()
    return dict(r.json())


def dead_reasons(collector: Collector) -> list[str]:
    return [d["reason"] for d in get_json(f"{collector.url}/api/v1/dead-letters")]


def test_two_fleets_with_the_same_device_name_are_two_devices(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    other = WindowMaker(windows.manifest, windows.fleet + "-b")
    config = collector_config(broker, db_url, **{"mqtt.fleets": [windows.fleet, other.fleet]})
    collector = start_collector(config)
    publisher.publish_many([windows.payload("pi-1", seq, n=10) for seq in range(10)])
    publisher.publish_many([other.payload("pi-1", seq, n=30) for seq in range(6)])
    wait_until(lambda: collector.store.count_windows() == 16, what="16 windows")
    rows = {(d["fleet"], d["device"]): d for d in get_json(f"{collector.url}/api/v1/devices")}
    a, b = rows[(windows.fleet, "pi-1")], rows[(other.fleet, "pi-1")]
    assert (a["windows"], a["inferences"], a["last_seq"]) == (10, 100, 9)
    assert (b["windows"], b["inferences"], b["last_seq"]) == (6, 180, 5)
    # The name alone is ambiguous now: the API says so and names the way out.
    r = httpx.get(f"{collector.url}/api/v1/devices/pi-1", timeout=10)
    assert r.status_code == 409 and "/api/v1/devices/FLEET/pi-1" in r.json()["error"]
    assert device_row(collector, other.fleet, "pi-1")["inferences"] == 180
    only_b = get_json(f"{collector.url}/api/v1/windows?device=pi-1&fleet={other.fleet}")
    assert len(only_b) == 6 and {w["fleet"] for w in only_b} == {other.fleet}
    assert [
        d["device"] for d in get_json(f"{collector.url}/api/v1/devices?fleet={other.fleet}")
    ] == ["pi-1"]


def test_a_new_spool_epoch_is_a_new_life_of_the_device_not_duplicates(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, db_url, windows.fleet))
    publisher.publish_many([lived(windows, "pi", "first", seq, n=10) for seq in range(8)])
    wait_until(lambda: collector.store.count_windows() == 8, what="the first life")
    # Re-imaged: a new spool, a new epoch, seq from 0 again.
    publisher.publish_many([lived(windows, "pi", "second", seq, n=20) for seq in range(5)])
    wait_until(lambda: collector.store.count_windows() == 13, what="the second life too")
    row = device_row(collector, windows.fleet, "pi")
    assert (row["windows"], row["inferences"], row["missing"]) == (13, 8 * 10 + 5 * 20, 0)
    assert (row["epoch"], row["last_seq"]) == ("second", 4)
    lives = {life["epoch"]: life for life in row["epochs"]}
    assert (lives["first"]["first_seq"], lives["first"]["last_seq"]) == (0, 7)
    assert (lives["second"]["windows"], lives["second"]["inferences"]) == (5, 100)
    assert not dead_reasons(collector)


def test_windows_missing_are_counted_per_epoch_and_a_late_window_fills_its_gap(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(collector_config(broker, db_url, windows.fleet))
    publisher.publish_many([lived(windows, "pi", "e", s) for s in range(10) if s not in (3, 7)])
    wait_until(lambda: collector.store.count_windows() == 8, what="8 windows")
    assert device_row(collector, windows.fleet, "pi")["missing"] == 2
    publisher.publish(*lived(windows, "pi", "e", 3))  # the broker delivered it late after all
    wait_until(lambda: device_row(collector, windows.fleet, "pi").get("missing") == 1, what="1 gap")
    listed = get_json(f"{collector.url}/api/v1/devices")
    assert [d["missing"] for d in listed] == [1]


def test_a_far_seq_is_a_dead_letter_and_a_different_window_under_a_taken_key_is_no_duplicate(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        collector_config(broker, db_url, windows.fleet, **{"storage.max_seq_jump": 1000})
    )
    real = [lived(windows, "pi", "e", seq, n=10) for seq in range(6)]
    publisher.publish_many(real[:5])
    wait_until(lambda: collector.store.count_windows() == 5, what="5 windows")
    publisher.publish(*lived(windows, "pi", "e", FAR, n=999))
    publisher.publish(*lived(windows, "pi", "e", 4 + 1001, n=999))  # just past the bound
    publisher.publish_many(real[:5])  # a redelivery is a duplicate, silently
    publisher.publish(*real[5])
    wait_until(lambda: collector.store.count_windows() == 6, what="the real sixth window")
    wait_until(lambda: len(dead_reasons(collector)) == 2, what="two dead letters")
    assert all("storage.max_seq_jump (1000)" in r for r in dead_reasons(collector))
    row = device_row(collector, windows.fleet, "pi")
    assert (row["last_seq"], row["inferences"], row["missing"]) == (5, 60, 0)
    # Another window under a stored key (forged, or a spool restored from a backup) is kept
    # apart as a conflict, never silently counted as a duplicate.
    publisher.publish(*lived(windows, "pi", "e", 2, n=999))
    wait_until(lambda: len(dead_reasons(collector)) == 3, what="the conflict")
    assert dead_reasons(collector)[0].startswith("conflict: another window with seq 2")
    assert device_row(collector, windows.fleet, "pi")["inferences"] == 60


def test_a_forged_offline_status_does_not_outrank_windows_received_after_it(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    collector = start_collector(
        collector_config(broker, sqlite_url, windows.fleet, **{"alerts.default_window_s": 600})
    )
    publisher.publish(*windows.payload("pi", 0))
    wait_until(lambda: device_row(collector, windows.fleet, "pi").get("online"), what="online")
    forged = DeviceStatus(fleet=windows.fleet, device="pi", online=False, since=time.time())
    topic = status_topic(windows.fleet, "pi")
    publisher.publish(topic, encode_status(forged), retain=True)
    try:
        wait_until(
            lambda: (
                (device_row(collector, windows.fleet, "pi")["status"] or {}).get("online") is False
            ),
            what="the forged status stored",
        )
        # A status that names another device than its topic changes nothing.
        other = forged.model_copy(update={"device": "pi-2", "online": True})
        publisher.publish(topic, encode_status(other))
        wait_until(lambda: dead_reasons(collector), what="the mismatched status refused")
        assert "but was published on" in dead_reasons(collector)[0]
        publisher.publish(*windows.payload("pi", 1))  # the device goes on reporting
        wait_until(
            lambda: device_row(collector, windows.fleet, "pi").get("online"), what="online again"
        )
        assert collector.store.device("pi-2", windows.fleet) is None
    finally:
        publisher.publish(topic, b"", retain=True)


def test_with_the_registry_required_only_enrolled_devices_are_stored(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    config = collector_config(broker, sqlite_url, windows.fleet, **{"registry.required": True})
    collector = start_collector(config)
    from edgedl.collector.registry import DeviceRegistry

    registry = DeviceRegistry(collector.store)
    assert registry.add(windows.fleet, "known") and not registry.add(windows.fleet, "known")
    publisher.publish_many([windows.payload(d, 0) for d in ("known", "stranger")])
    status = DeviceStatus(fleet=windows.fleet, device="stranger", online=True, since=time.time())
    publisher.publish(status_topic(windows.fleet, "stranger"), encode_status(status))
    wait_until(lambda: len(dead_reasons(collector)) == 2, what="the stranger refused twice")
    assert all(r.startswith("unknown device") for r in dead_reasons(collector))
    assert [d["device"] for d in get_json(f"{collector.url}/api/v1/devices")] == ["known"]
    assert registry.remove(windows.fleet, "known")
    publisher.publish(*windows.payload("known", 1))
    wait_until(lambda: len(dead_reasons(collector)) == 3, what="a removed device refused")
    assert collector.store.count_windows() == 1
    assert json.loads(json.dumps(registry.enrolled())) == []


def test_lives_add_up_when_windows_of_two_epochs_interleave(
    db_url: str, windows: WindowMaker
) -> None:
    """The current life's counters live on the device's row and move to its own row when the
    device switches lives (a trigger): however the windows of two lives interleave, within a
    batch and across batches, and across a restart, each life counts its windows once."""
    from edgedl.collector.ingest import Ingestor, Message
    from edgedl.collector.store import Store

    def batch(*keys: tuple[str, int]) -> list[Message]:
        return [Message(*lived(windows, "pi", e, s, n=1 + s)) for e, s in keys]

    store = Store(db_url)
    ingest = Ingestor(store).ingest
    ingest(batch(("a", 0), ("a", 1), ("a", 2), ("a", 3)))
    ingest(batch(("b", 0), ("a", 4), ("b", 1)))  # a late window of the first life
    ingest(batch(("a", 5)))  # and another, alone: the device goes back to "a", then on
    ingest(batch(("b", 2), ("b", 3)))
    store.close()
    store = Store(db_url)  # a restarted collector: the seq checks read the lives back
    result = Ingestor(store).ingest(batch(("b", 4), ("a", 6)))
    assert len(result.stored) == 2 and not result.dead
    row = store.device("pi", fleet=windows.fleet)
    store.close()
    assert row is not None
    lives = {life["epoch"]: life for life in row["epochs"]}
    assert (row["windows"], row["missing"]) == (12, 0)
    assert {e: (x["first_seq"], x["last_seq"], x["windows"]) for e, x in lives.items()} == {
        "a": (0, 6, 7),
        "b": (0, 4, 5),
    }
    assert lives["a"]["inferences"] == sum(1 + s for s in range(7))
    assert lives["b"]["inferences"] == sum(1 + s for s in range(5))
    assert row["inferences"] == lives["a"]["inferences"] + lives["b"]["inferences"]
