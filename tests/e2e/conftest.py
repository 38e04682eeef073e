"""End-to-end fixtures: real agents, a real Mosquitto and a real collector, each its own process.

* ``agent_process`` (from tests/agent/conftest.py): ``edgedl agent serve`` subprocesses.
* ``e2e_broker``: a persistent Mosquitto on a free port (tests/mqtt_broker.py), so a test
  may stop and restart it without touching the shared broker on 1883.
* ``collector_process``: a factory starting ``edgedl collector run`` on that broker with a
  SQLite database; it waits until the HTTP API answers.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests import mqtt_broker
from tests.agent import conftest as agent_conftest
from tests.conftest import EDGEDL
from tests.mqtt_broker import MosquittoBroker
from tests.ports import free_port

agent_process = agent_conftest.agent_process


@pytest.fixture
def e2e_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A persistent Mosquitto of this test's own."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


class CollectorProcess:
    """``edgedl collector run`` as a subprocess, with its HTTP API at ``url``."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [EDGEDL, "collector", "run", "--http-port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited with {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.url}/api/v1/devices", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"collector not ready after {timeout} s:\n{self.output}")

    def get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


@pytest.fixture
def collector_process(
    tmp_path: Path, e2e_broker: MosquittoBroker
) -> Iterator[Callable[..., CollectorProcess]]:
    """A factory: ``collector_process("--reference", bundle)`` -> a ready collector."""
    started: list[CollectorProcess] = []

    def start(*args: str | Path) -> CollectorProcess:
        n = len(started)
        collector = CollectorProcess(
            [
                "--mqtt",
                e2e_broker.url,
                "--db",
                f"sqlite:///{tmp_path / f'collector{n}.db'}",
                "--no-shared",
                "--client-id",
                f"e2e-collector-{n}",
                *map(str, args),
            ],
            tmp_path / f"collector{n}.log",
        )
        started.append(collector)
        collector.wait_ready()
        return collector

    yield start
    for collector in started:
        collector.stop()


__all__ = ["agent_process", "collector_process", "e2e_broker", "mqtt_broker"]
