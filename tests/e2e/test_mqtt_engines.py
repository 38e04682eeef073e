"""Telemetry end to end through other MQTT engines than Mosquitto: NATS (with JetStream) and
RabbitMQ (its MQTT plugin), both clusterable.

A real agent publishes windows through a broker of the test's own (``nats-server`` or a
``rabbitmq-server`` node, each with its MQTT 3.1.1 listener) to two collectors of one group
on one database. Neither engine (NATS 2.9, RabbitMQ 3.10 as Debian bookworm ships them)
speaks MQTT 5, so agent and collectors fall back to MQTT 3.1.1 (persistent sessions, QoS 1,
retained status, last will) and there is no shared subscription: each collector receives
every window and stores it once. The broker is restarted while the agent keeps serving;
every inference arrives exactly once, and a collector started afterwards finds the device's
retained status. Each engine is skipped, saying why, where it is not installed.
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
from tests.rabbitmq_broker import RABBITMQ_SERVER, RabbitBroker

pytestmark = pytest.mark.slow


#: Engine name: (its binary or None, the Debian package, the broker class, whether a
#: wildcard subscription receives retained messages). RabbitMQ 3.10 delivers a retained
#: message only to a subscription to its exact topic (measured), and the collector's are
#: wildcards: there a collector learns a device when the device next publishes.
ENGINES = {
    "nats": (NATS_SERVER, "nats-server", NatsBroker, True),
    "rabbitmq": (RABBITMQ_SERVER, "rabbitmq-server", RabbitBroker, False),
}


@pytest.fixture(params=list(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NatsBroker | RabbitBroker]:
    """A broker of the engine's of the test's own, stopped at the end."""
    binary, package, cls, _ = ENGINES[request.param]
    if binary is None:
        print(f"{package} is not installed (Debian package {package}): {request.param} skipped")
        pytest.skip(f"{package} is not installed")
    broker = cls(tmp_path / request.param)
    broker.start()
    yield broker
    broker.stop()


def counter(collector: CollectorProcess, name: str) -> float:
    text = httpx.get(f"{collector.url}/metrics", timeout=10).text
    match = re.search(rf"^{name}_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_windows_arrive_once_through_a_broker_restart(
    tmp_path: Path,
    engine: NatsBroker | RabbitBroker,
    agent_process: Callable[..., AgentProcess],
    digits_bundle: Callable[..., Path],
) -> None:
    bundle = digits_bundle("tflite-int8")
    kind = next(name for name, (*_, cls, _) in ENGINES.items() if isinstance(engine, cls))
    retained_on_wildcards = ENGINES[kind][3]
    db = f"sqlite:///{tmp_path / 'collector.db'}"
    started: list[CollectorProcess] = []

    def collector(name: str, database: str = db) -> CollectorProcess:
        c = CollectorProcess(
            ["--mqtt", engine.url, "--db", database, "--group", f"{kind}-group",
             "--client-id", name, "--reference", str(bundle)],
            tmp_path / f"{name}.log",
        )  # fmt: skip
        started.append(c)
        c.wait_ready()
        return c

    def subscribed(c: CollectorProcess) -> bool:
        return bool(c.get("/healthz")["mqtt_subscribed"])

    try:
        a, b = collector(f"{kind}-a"), collector(f"{kind}-b")
        for c in (a, b):
            wait_until(lambda c=c: subscribed(c), 60, "the collector's subscription")  # type: ignore[misc]
            health = c.get("/healthz")
            assert (health["mqtt_protocol"], health["mqtt_shared"]) == ("3.1.1", False)
            assert "using MQTT 3.1.1" in c.output and "--fleet" in c.output

        folder = tmp_path / f"pi-{kind}"
        spool = folder / "spool.db"
        images = digit_images(300)
        agent = start_agent(agent_process, bundle, engine, folder, f"pi-{kind}")  # type: ignore[arg-type]
        sent = send(agent, images[:100])
        wait_spooled(spool)
        engine.stop()  # the agent keeps serving; its windows wait in its spool
        sent += send(agent, images[100:200])
        wait_spooled(spool)
        engine.start()  # the broker kept the collectors' sessions on disk
        sent += send(agent, images[200:300])
        assert agent.terminate() == 0
        windows = next_seq(spool)

        def device() -> dict[str, object]:
            return dict(a.get(f"/api/v1/devices/pi-{kind}"))

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

        # The status is retained in the broker: a collector that starts now learns it where
        # the engine gives retained messages to wildcard subscriptions, else when the device
        # next connects (its status, online).
        late = collector(f"{kind}-late", f"sqlite:///{tmp_path / 'late.db'}")
        wait_until(lambda: subscribed(late), 60, "the late collector's subscription")

        def known_to_late() -> bool:
            return any(d["device"] == f"pi-{kind}" for d in late.get("/api/v1/devices"))

        if retained_on_wildcards:
            wait_until(known_to_late, 60, "the retained status at a new collector")
            status = late.get(f"/api/v1/devices/pi-{kind}")
            assert status["online"] is False and status["windows"] == 0
        else:
            assert not known_to_late()
            again = start_agent(agent_process, bundle, engine, folder, f"pi-{kind}")  # type: ignore[arg-type]
            wait_until(known_to_late, 60, "the device's status at a new collector")
            assert late.get(f"/api/v1/devices/pi-{kind}")["online"] is True
            assert again.terminate() == 0
    finally:
        for c in started:
            c.stop()
