"""Who a window is from, with real agents, a real Mosquitto and a real collector process.

* Two fleets each with a device ``pi-1``: both counted exactly, apart.
* A device whose spool is deleted (re-imaged) keeps reporting: every window of both lives is
  stored (inferences in = inferences stored).
* Forged windows copied from the device's own (a far-future seq, near-future seqs) change
  nothing for the real device.
* A forged retained ``online: false`` status does not take a reporting device offline.
* With ``--registry-required`` only the devices enrolled with ``edgedl collector devices add``
  are stored; the CLI adds, lists and removes them.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.conftest import EDGEDL
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import next_seq, send, start_agent, wait_until
from tests.mqtt_broker import MosquittoBroker

from edgedl.telemetry import (
    DeviceStatus,
    TelemetryWindow,
    decode_window,
    encode_status,
    encode_window,
    status_topic,
    telemetry_topic,
)

pytestmark = pytest.mark.slow

FAR = 2**63 - 2


@dataclass
class Story:
    """A collector process (digits as its reference) and the agents a test starts on its broker."""

    bundle: Path
    collector: CollectorProcess
    broker: MosquittoBroker
    start: Callable[..., AgentProcess]
    folder: Path

    def agent(self, fleet: str, device: str) -> tuple[AgentProcess, Path]:
        """A started agent of ``fleet/device`` and its spool file (one folder per device)."""
        folder = self.folder / f"{fleet}-{device}"
        agent = start_agent(self.start, self.bundle, self.broker, folder, device, fleet=fleet)
        return agent, folder / "spool.db"


@pytest.fixture
def story(
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    digits_bundle: Callable[..., Path],
    tmp_path: Path,
) -> Callable[..., Story]:
    """A factory: ``story("--registry-required")`` starts the collector with those flags."""

    def make(*collector_args: str) -> Story:
        bundle = digits_bundle("tflite-int8")
        collector = collector_process("--reference", bundle, *collector_args)
        return Story(bundle, collector, e2e_broker, agent_process, tmp_path)

    return make


def spool_epoch(spool: Path) -> str:
    """The epoch the agent's spool was created with ("" where the spool has none)."""
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=30) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            return ""
        row = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        return str(row[0]) if row else ""


def listed(collector: CollectorProcess, fleet: str, device: str) -> dict[str, Any] | None:
    """The device as ``GET /api/v1/devices`` lists it (one row per fleet and name)."""
    rows = [
        d for d in collector.get("/api/v1/devices") if (d["fleet"], d["device"]) == (fleet, device)
    ]
    assert len(rows) <= 1
    return rows[0] if rows else None


def windows_of(collector: CollectorProcess, fleet: str, device: str) -> list[dict[str, Any]]:
    rows = collector.get("/api/v1/windows", device=device, fleet=fleet, limit=5000)
    return [r for r in rows if r["fleet"] == fleet]


def test_two_fleets_with_one_device_name_are_both_counted_exactly(
    story: Callable[..., Story],
) -> None:
    world = story()
    collector = world.collector
    images = digit_images(100)
    counts = {"factory-a": 40, "factory-b": 60}
    windows = {}
    for fleet, n in counts.items():
        agent, spool = world.agent(fleet, "pi-1")
        send(agent, images[:n])
        assert agent.terminate() == 0
        windows[fleet] = next_seq(spool)
    for fleet, n in counts.items():
        wait_until(
            lambda f=fleet: (listed(collector, f, "pi-1") or {}).get("windows") == windows[f],  # type: ignore[misc]
            60,
            f"{windows[fleet]} windows of {fleet}/pi-1",
        )
        row = listed(collector, fleet, "pi-1")
        assert row is not None and row["inferences"] == n and row["missing"] == 0
    assert collector.get("/api/v1/devices/factory-b/pi-1")["inferences"] == 60


def test_a_device_whose_spool_is_deleted_keeps_reporting_every_window(
    story: Callable[..., Story],
) -> None:
    world = story()
    collector = world.collector
    images = digit_images(200)
    agent, spool = world.agent("factory-7", "pi-9")
    send(agent, images[:100])
    assert agent.terminate() == 0
    first_life = next_seq(spool)
    wait_until(
        lambda: (listed(collector, "factory-7", "pi-9") or {}).get("windows") == first_life,
        60,
        "the first life's windows",
    )
    for path in spool.parent.glob("spool.db*"):  # re-imaged: the spool is gone
        path.unlink()
    agent, _ = world.agent("factory-7", "pi-9")
    send(agent, images[100:])
    assert agent.terminate() == 0
    second_life = next_seq(spool)
    total = first_life + second_life
    wait_until(
        lambda: (listed(collector, "factory-7", "pi-9") or {}).get("windows") == total,
        60,
        f"{total} windows over both lives",
    )
    row = listed(collector, "factory-7", "pi-9")
    assert row is not None
    assert row["inferences"] == 200  # inferences in = inferences stored
    assert row["missing"] == 0 and len(row["epochs"]) == 2
    assert row["epoch"] == spool_epoch(spool) and row["last_seq"] == second_life - 1


class Forger:
    """A client on the broker that copies a device's windows and publishes altered ones."""

    def __init__(self, broker: MosquittoBroker, fleet: str, device: str) -> None:
        self.fleet, self.device = fleet, device
        self.captured: list[TelemetryWindow] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"forger-{uuid.uuid4().hex[:6]}"
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(telemetry_topic(fleet, device), qos=1)
        self.client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        window = decode_window(msg.payload)
        with self._lock:
            self.captured.append(window)

    def served_window(self) -> TelemetryWindow | None:
        with self._lock:
            return next((w for w in self.captured if w.inferences), None)

    def publish(self, window: TelemetryWindow) -> None:
        topic = telemetry_topic(self.fleet, self.device)
        self.client.publish(topic, encode_window(window)[0], qos=1).wait_for_publish(10)

    def publish_status(self, payload: bytes) -> None:
        topic = status_topic(self.fleet, self.device)
        self.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_forged_far_and_near_future_seqs_change_nothing_for_the_real_device(
    story: Callable[..., Story],
) -> None:
    world = story()
    collector = world.collector
    forger = Forger(world.broker, "factory-7", "pi-3")
    images = digit_images(200)
    try:
        agent, spool = world.agent("factory-7", "pi-3")
        sent = send(agent, images[:100])
        wait_until(lambda: forger.served_window() is not None, 30, "a window of pi-3 seen")
        real = forger.served_window()
        assert real is not None
        # A copy of a real window, its seq near 2^63 (it would hold the device's newest seq).
        forger.publish(real.model_copy(update={"seq": FAR}))
        # Copies a little ahead of the device, claiming many inferences, without its epoch:
        # the seqs the device is about to send.
        ahead = next_seq(spool)
        fake_counts = real.models[0].counts.model_copy(update={"inferences": 1000})
        fake_model = real.models[0].model_copy(update={"counts": fake_counts})
        for seq in range(ahead + 1, ahead + 6):
            forged = TelemetryWindow.model_validate(
                {
                    **real.model_dump(exclude={"epoch"}),
                    "seq": seq,
                    "models": [fake_model.model_dump()],
                }
            )
            forger.publish(forged)
        sent += send(agent, images[100:])
        assert agent.terminate() == 0
    finally:
        forger.close()
    windows, epoch = next_seq(spool), spool_epoch(spool)

    def real_windows() -> list[dict[str, Any]]:
        rows = windows_of(collector, "factory-7", "pi-3")
        return [r for r in rows if r.get("epoch", "") == epoch and r["seq"] < windows]

    wait_until(lambda: len(real_windows()) == windows, 60, f"the device's {windows} windows")
    assert sum(r["inferences"] for r in real_windows()) == sent == 200
    row = listed(collector, "factory-7", "pi-3")
    assert row is not None
    assert (row["epoch"], row["last_seq"]) == (epoch, windows - 1)
    [life] = [life for life in row["epochs"] if life["epoch"] == epoch]
    assert (life["windows"], life["inferences"], life["missing"]) == (windows, 200, 0)
    reasons = [d["reason"] for d in collector.get("/api/v1/dead-letters")]
    assert any("storage.max_seq_jump" in r for r in reasons)


def test_a_forged_retained_offline_status_does_not_take_a_reporting_device_offline(
    story: Callable[..., Story],
) -> None:
    world = story()
    collector = world.collector
    agent, _ = world.agent("factory-7", "pi-6")
    send(agent, digit_images(20))
    wait_until(
        lambda: (listed(collector, "factory-7", "pi-6") or {}).get("online") is True,
        30,
        "pi-6 online",
    )
    forger = Forger(world.broker, "factory-7", "pi-6")
    try:
        forged = DeviceStatus(fleet="factory-7", device="pi-6", online=False, since=time.time())
        forger.publish_status(encode_status(forged))
        wait_until(
            lambda: (
                ((listed(collector, "factory-7", "pi-6") or {}).get("status") or {}).get("online")
                is False
            ),
            30,
            "the forged status at the collector",
        )
        # The device goes on sending windows, so it is online, whatever the status says.
        wait_until(
            lambda: (listed(collector, "factory-7", "pi-6") or {}).get("online") is True,
            30,
            "pi-6 online again after its next window",
        )
    finally:
        forger.close()
    assert agent.terminate() == 0


def devices_cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEDL, "collector", "devices", *args, "--db", db],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_with_the_registry_required_only_enrolled_devices_are_stored(
    story: Callable[..., Story], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'collector0.db'}"  # the database collector_process uses
    added = devices_cli(db, "add", "factory-r", "pi-ok")
    assert added.returncode == 0 and added.stdout.strip() == "factory-r/pi-ok: enrolled"
    assert devices_cli(db, "ls").stdout.splitlines() == ["factory-r/pi-ok"]
    bad = devices_cli(db, "add", "factory-r", "no/slash")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    world = story("--registry-required")
    collector = world.collector
    windows = {}
    for device in ("pi-ok", "pi-stranger"):
        agent, spool = world.agent("factory-r", device)
        send(agent, digit_images(20))
        assert agent.terminate() == 0
        windows[device] = next_seq(spool)
    wait_until(
        lambda: (listed(collector, "factory-r", "pi-ok") or {}).get("windows") == windows["pi-ok"],
        60,
        "pi-ok's windows",
    )

    def refused() -> list[dict[str, Any]]:
        return [
            d
            for d in collector.get("/api/v1/dead-letters", limit=1000)
            if d["reason"].startswith("unknown device") and "/pi-stranger/" in d["topic"]
        ]

    # Every window of the stranger and its statuses (online, then offline at its exit).
    wait_until(lambda: len(refused()) >= windows["pi-stranger"] + 2, 60, "the stranger refused")
    assert [d["device"] for d in collector.get("/api/v1/devices")] == ["pi-ok"]
    assert listed(collector, "factory-r", "pi-ok")["inferences"] == 20  # type: ignore[index]
    removed = devices_cli(db, "rm", "factory-r", "pi-ok")
    assert removed.returncode == 0 and "removed" in removed.stdout
    again = devices_cli(db, "rm", "factory-r", "pi-ok")
    assert again.returncode == 1 and "not enrolled" in again.stderr
    assert devices_cli(db, "ls").stdout.strip() == "no device enrolled"
