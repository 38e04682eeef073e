"""Agent -> Mosquitto -> collector, every part a real process, as an operator would run them.

* N inferences on a device arrive as exactly N in the collector, through a broker outage and
  a ``kill -9`` of the agent (the spool keeps what was cut; the collector stores each
  (device, seq) once).
* Digits made brighter and noisier on purpose raise a drift alert; unshifted digits, sent
  at the same time by another device, do not.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.e2e.conftest import CollectorProcess
from tests.mqtt_broker import MosquittoBroker

pytestmark = pytest.mark.slow

AGENT_TOML = """
[telemetry]
spool_path = "{spool}"
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 1.0
"""


def start_agent(
    agent_process: Callable[..., AgentProcess],
    bundle: Path,
    broker: MosquittoBroker,
    folder: Path,
    device: str,
    fleet: str = "factory-7",
) -> AgentProcess:
    folder.mkdir(exist_ok=True)
    config = folder / "agent.toml"
    config.write_text(AGENT_TOML.format(spool=folder / "spool.db"))
    return agent_process(
        "--config", config, "--model", bundle, "--mqtt", broker.url,
        "--fleet", fleet, "--device", device, "--telemetry-interval", "0.5",
    )  # fmt: skip


def next_seq(spool: Path) -> int:
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=30) as db:
        return int(db.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()[0])


def wait_spooled(spool: Path, windows: int = 2, timeout: float = 30) -> None:
    """Wait until the agent cut ``windows`` more windows: what came before is on disk."""
    target = next_seq(spool) + windows
    deadline = time.monotonic() + timeout
    while next_seq(spool) < target:
        assert time.monotonic() < deadline, "the agent stopped cutting windows"
        time.sleep(0.1)


def send(agent: AgentProcess, images: np.ndarray[Any, Any], batch: int = 4) -> int:
    with agent.client() as client:
        for i in range(0, len(images), batch):
            client.infer("digits", images[i : i + batch])
    return len(images)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_n_inferences_arrive_as_exactly_n_through_an_outage_and_a_kill_9(
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    digits_bundle: Callable[..., Path],
    tmp_path: Path,
) -> None:
    bundle = digits_bundle("tflite-int8")
    collector = collector_process("--reference", bundle)
    folder = tmp_path / "pi-42"
    spool = folder / "spool.db"
    images = digit_images(400)

    agent = start_agent(agent_process, bundle, e2e_broker, folder, "pi-42")
    sent = send(agent, images[:100])
    wait_spooled(spool)
    e2e_broker.stop()
    sent += send(agent, images[100:200])
    wait_spooled(spool)
    os.kill(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()
    agent = start_agent(agent_process, bundle, e2e_broker, folder, "pi-42")
    sent += send(agent, images[200:300])
    wait_spooled(spool)
    e2e_broker.start()
    sent += send(agent, images[300:400])
    assert agent.terminate() == 0
    windows = next_seq(spool)

    def device() -> dict[str, Any]:
        return dict(collector.get("/api/v1/devices/pi-42"))

    wait_until(lambda: device()["windows"] == windows, 60, f"{windows} windows at the collector")
    row = device()
    assert row["inferences"] == sent == 400  # exactly N: nothing lost, nothing twice
    assert row["last_seq"] == windows - 1
    assert (row["model"], row["version"]) == ("digits", "1")


def test_shifted_inputs_raise_a_drift_alert_and_unshifted_ones_do_not(
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    digits_bundle: Callable[..., Path],
    tmp_path: Path,
) -> None:
    bundle = digits_bundle("tflite-int8")
    collector = collector_process("--reference", bundle, "--min-samples", "200")
    clean = start_agent(agent_process, bundle, e2e_broker, tmp_path / "clean", "pi-clean")
    shifted = start_agent(agent_process, bundle, e2e_broker, tmp_path / "shift", "pi-shifted")

    images = digit_images(600, start=1000)
    rng = np.random.default_rng(0)
    # A dirty lens and a brighter room: contrast down, brightness up, sensor noise.
    brighter = np.clip(0.5 * images + 0.4 + rng.normal(0, 0.08, images.shape), 0, 1)
    send(clean, images)
    send(shifted, brighter.astype(np.float32))

    def drift_alerts(device: str) -> list[dict[str, Any]]:
        return [
            a
            for a in collector.get("/api/v1/alerts")
            if a["kind"] == "drift" and a["device"] == device
        ]

    wait_until(lambda: bool(drift_alerts("pi-shifted")), 60, "a drift alert for pi-shifted")
    for device in ("pi-clean", "pi-shifted"):
        wait_until(
            lambda d=device: collector.get(f"/api/v1/devices/{d}")["inferences"] == 600,  # type: ignore[misc]
            60,
            f"600 inferences of {device}",
        )

    def clean_judged() -> bool:  # drift is evaluated as windows arrive: the clean device too
        judged = collector.get("/api/v1/drift", device="pi-clean")
        return len(judged) == 1 and judged[0]["samples"] >= 200

    wait_until(clean_judged, 60, "pi-clean's windows judged for drift")
    alert = drift_alerts("pi-shifted")[0]
    assert alert["state"] == "open" and alert["value"] > alert["threshold"]
    assert drift_alerts("pi-clean") == []  # judged, and found no drift
    assert clean.terminate() == 0 and shifted.terminate() == 0
