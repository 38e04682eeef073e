"""Telemetry from a real ``edgedl agent serve``: outages, ``kill -9``, the last will.

A plain paho subscriber (persistent session, QoS 1) stands in for the collector here;
tests/e2e/ checks the same story through the collector, which stores each window once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests import mqtt_broker
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.conftest import run_edgedl
from tests.mqtt_broker import MosquittoBroker, Recorder

from edgedl.telemetry import TelemetryWindow, decode_status, decode_window

mosquitto_broker = mqtt_broker.mosquitto_broker

pytestmark = pytest.mark.slow

AGENT_TOML = """
[telemetry]
spool_path = "{spool}"
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 1.0
"""


@pytest.fixture
def recorder(mosquitto_broker: MosquittoBroker) -> Iterator[Recorder]:
    rec = Recorder(mosquitto_broker.url, ["edgedl/v1/#"])
    yield rec
    rec.close()


def next_seq(spool: Path) -> int:
    """The agent's next window number, read from its spool as any SQLite reader would."""
    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=30) as db:
        return int(db.execute("SELECT value FROM counters WHERE name = 'next_seq'").fetchone()[0])


def wait_spooled(spool: Path, windows: int = 2, timeout: float = 30) -> None:
    """Wait until the agent has cut ``windows`` more windows (so what came before is on disk)."""
    target = next_seq(spool) + windows
    deadline = time.monotonic() + timeout
    while next_seq(spool) < target:
        assert time.monotonic() < deadline, "the agent stopped cutting windows"
        time.sleep(0.1)


def infer(agent: AgentProcess, requests: int, batch: int = 4) -> int:
    """Send ``requests`` digit requests; the number of inferences (images) sent."""
    images = digit_images(requests * batch)
    with agent.client() as client:
        for i in range(requests):
            client.infer("digits", images[i * batch : (i + 1) * batch])
    return requests * batch


def unique_windows(recorder: Recorder) -> dict[int, TelemetryWindow]:
    """Windows by seq; a window delivered twice (QoS 1 after a kill) must be byte-identical."""
    payloads: dict[int, bytes] = {}
    for message in recorder.on("/telemetry"):
        seq = decode_window(message.payload).seq
        assert payloads.setdefault(seq, message.payload) == message.payload
    return {seq: decode_window(p) for seq, p in payloads.items()}


@pytest.fixture
def agent_args(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, digits_bundle: Callable[..., Path]
) -> list[str]:
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML.format(spool=tmp_path / "spool.db"))
    return [
        "--config",
        str(config),
        "--model",
        str(digits_bundle("tflite-int8")),
        "--mqtt",
        mosquitto_broker.url,
        "--fleet",
        "factory-7",
        "--device",
        "pi-42",
        "--telemetry-interval",
        "0.5",
    ]


def test_every_window_arrives_through_an_outage_and_a_kill_9(
    agent_process: Callable[..., AgentProcess],
    agent_args: list[str],
    mosquitto_broker: MosquittoBroker,
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool.db"
    agent = agent_process(*agent_args)
    sent = infer(agent, 10)
    wait_spooled(spool)

    mosquitto_broker.stop()  # the broker goes away; the agent keeps serving and spooling
    sent += infer(agent, 10)
    wait_spooled(spool)

    os.kill(agent.proc.pid, signal.SIGKILL)  # and then the agent dies without a word
    agent.proc.wait()
    agent = agent_process(*agent_args)  # same spool: the restarted agent sends the backlog
    sent += infer(agent, 5)
    wait_spooled(spool)

    mosquitto_broker.start()  # the broker is back: the backlog goes out while serving
    sent += infer(agent, 5)
    backlog = next_seq(spool) - 1
    assert recorder.wait_for(lambda m: backlog in unique_windows(recorder), 60)
    assert agent.terminate() == 0  # a clean stop spools the last window and sends it
    last = next_seq(spool) - 1
    assert recorder.wait_for(lambda m: last in unique_windows(recorder), 30)

    windows = unique_windows(recorder)
    assert sorted(windows) == list(range(last + 1))  # every window, in one copy each
    assert sum(w.inferences for w in windows.values()) == sent == 120
    assert all(w.spool.dropped == 0 for w in windows.values())
    served = [m for w in windows.values() for m in w.models]
    assert {(m.name, m.version) for m in served} == {("digits", "1")}
    profile_samples = sum(m.profile.samples for m in served if m.profile is not None)
    assert profile_samples == 120  # every inference binned on the manifest's reference edges


def test_the_last_will_marks_a_killed_agent_offline(
    agent_process: Callable[..., AgentProcess],
    agent_args: list[str],
    mosquitto_broker: MosquittoBroker,
    recorder: Recorder,
) -> None:
    agent = agent_process(*agent_args)

    def statuses() -> list[bool]:
        return [decode_status(m.payload).online for m in recorder.on("/status")]

    assert recorder.wait_for(lambda m: True in statuses(), 30)
    os.kill(agent.proc.pid, signal.SIGKILL)
    assert recorder.wait_for(lambda m: statuses()[-1] is False, 30)

    late = Recorder(mosquitto_broker.url, ["edgedl/v1/factory-7/+/status"])
    assert late.wait_for(lambda m: len(m) == 1, 10)  # retained: a newcomer learns it at once
    late.close()
    status = decode_status(late.messages[0].payload)
    assert (status.device, status.online) == ("pi-42", False)
    assert [(r.name, r.version) for r in status.models] == [("digits", "1")]


def test_bad_telemetry_settings_are_one_line(tmp_path: Path) -> None:
    result = run_edgedl("agent", "serve", "--mqtt", "http://broker:1883")
    assert result.code != 0 and "Traceback" not in result.stderr
    assert "telemetry.mqtt" in result.last_error_line
    assert "mqtt:// or mqtts://" in result.last_error_line

    result = run_edgedl("agent", "serve", "--mqtt", "mqtts://127.0.0.1:8883", "--device", "pi/42")
    assert result.code != 0 and "telemetry.device" in result.last_error_line

    result = run_edgedl("agent", "serve", "--mqtt", "mqtt://pi:s3cret@broker:port")
    assert result.code != 0 and "telemetry.mqtt" in result.last_error_line
    assert "s3cret" not in result.stderr + result.stdout  # a password is never echoed
