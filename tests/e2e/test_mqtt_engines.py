"""Telemetry end to end through a second MQTT engine: NATS (with JetStream), not Mosquitto.

A real agent publishes windows through a ``nats-server`` of the test's own (its MQTT 3.1.1
listener) to two collectors of one group on one database. NATS 2.9 speaks no MQTT 5, so
agent and collectors fall back to MQTT 3.1.1 (persistent sessions, QoS 1, retained status,
last will) and there is no shared subscription: each collector receives every window and
stores it once. The broker is restarted while the agent keeps serving; every inference
arrives exactly once, and a collector started afterwards finds the device's retained status.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import next_seq, send, start_agent, wait_spooled, wait_until
from tests.nats_broker import NATS_SERVER, NatsBroker

pytestmark = pytest.mark.slow


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsBroker]:
    if NATS_SERVER is None:
        print("nats-server is not installed (Debian package nats-server): NATS test skipped")
        pytest.skip("nats-server is not installed")
    broker = NatsBroker(tmp_path / "nats")
    broker.start()
    yield broker
    broker.stop()


def counter(collector: CollectorProcess, name: str) -> float:
    text = httpx.get(f"{collector.url}/metrics", timeout=10).text
    match = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_windows_through_nats_arrive_once_through_a_broker_restart(
    tmp_path: Path,
    nats: NatsBroker,
    agent_process: Callable[..., AgentProcess],
    digits_bundle: Callable[..., Path],
) -> None:
    bundle = digits_bundle("tflite-int8")
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    started: list[CollectorProcess] = []

    def collector(name: str, database: str = db) -> CollectorProcess:
        c = CollectorProcess(
            ["--mqtt", nats.url, "--db", database, "--group", "nats-group",
             "--client-id", name, "--reference", str(bundle)],
            tmp_path / f"{name}.log",
        )  # fmt: skip
        started.append(c)
        c.wait_ready()
        return c

    def subscribed(c: CollectorProcess) -> bool:
        return bool(c.get("/healthz")["mqtt_subscribed"])

    try:
        a, b = collector("nats-a"), collector("nats-b")
        for c in (a, b):
            wait_until(lambda c=c: subscribed(c), 60, "the collector's subscription")  # type: ignore[misc]
            health = c.get("/healthz")
            assert (health["mqtt_protocol"], health["mqtt_shared"]) == ("3.1.1", False)
            assert "using MQTT 3.1.1" in c.output and "--fleet" in c.output

        folder = tmp_path / "pi-nats"
        spool = folder / "spool.db"
        images = digit_images(300)
        agent = start_agent(agent_process, bundle, nats, folder, "pi-nats")  # type: ignore[arg-type]
        sent = send(agent, images[:100])
        wait_spooled(spool)
        nats.stop()  # the agent keeps serving; its windows wait in its spool
        sent += send(agent, images[100:200])
        wait_spooled(spool)
        nats.start()  # JetStream kept the collectors' sessions and subscriptions
        sent += send(agent, images[200:300])
        assert agent.terminate() == 0
        windows = next_seq(spool)

        def device() -> dict[str, object]:
            return dict(a.get("/api/v1/devices/pi-nats"))

        wait_until(lambda: device()["windows"] == windows, 90, f"{windows} windows stored")
        row = device()
        assert row["inferences"] == sent == 300  # exactly N: nothing lost, nothing twice
        assert row["last_seq"] == windows - 1 and row["missing"] == 0
        # No shared subscription: both collectors took every window, one of them stored it.
        ingested = [counter(c, "edgedl_collector_windows_ingested") for c in (a, b)]
        duplicates = [counter(c, "edgedl_collector_windows_duplicate") for c in (a, b)]
        assert sum(ingested) == windows, ingested
        for got, dup in zip(ingested, duplicates, strict=True):
            assert got + dup >= windows, (ingested, duplicates)
        wait_until(lambda: device()["online"] is False, 30, "the agent's offline status")

        # The status is retained in the broker: a collector that starts now learns it.
        late = collector("nats-late", f"sqlite:///{tmp_path / 'late.db'}")
        wait_until(
            lambda: any(d["device"] == "pi-nats" for d in late.get("/api/v1/devices")),
            60,
            "the retained status at a new collector",
        )
        status = late.get("/api/v1/devices/pi-nats")
        assert status["online"] is False and status["windows"] == 0
    finally:
        for c in started:
            c.stop()
