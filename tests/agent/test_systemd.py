"""Running as a systemd service: sd_notify on a real socket, SIGTERM drain, the unit file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images, json_request, metric, output_of
from tests.conftest import EDGEDL, run_edgedl

from edgedl import runtime


class NotifyListener:
    """A unix datagram socket collecting what the agent sends, like systemd's."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.splitlines()]

    def wait_for(self, line: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.lines().count(line) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{line!r} x{count} never arrived; got {self.lines()}")
            time.sleep(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, NotifyListener]]:
    if request.param == "path":
        env_value = str(tmp_path / "notify.sock")
        listener = NotifyListener(env_value)
    else:
        name = f"edgedl-test-{uuid.uuid4().hex[:12]}"
        env_value = f"@{name}"
        listener = NotifyListener("\0" + name)
    yield env_value, listener
    listener.close()


@pytest.mark.slow
def test_sd_notify_ready_watchdog_status_and_stopping_arrive(
    digits_bundle: Any,
    agent_process: Callable[..., AgentProcess],
    notify_socket: tuple[str, NotifyListener],
) -> None:
    address, listener = notify_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    agent = agent_process("--model", digits_bundle("tflite-int8"), env=env)
    listener.wait_for("READY=1")
    listener.wait_for("WATCHDOG=1", count=3)
    statuses = [line for line in listener.lines() if line.startswith("STATUS=")]
    assert any("serving digits:1" in s for s in statuses), statuses
    assert agent.terminate() == 0
    listener.wait_for("STOPPING=1")
    lines = listener.lines()
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert any(s.startswith("STATUS=draining") for s in lines)


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess]
) -> None:
    bundle = digits_bundle("tflite-int8")
    # A long queue delay keeps the requests in flight while the signal arrives.
    agent = agent_process(
        "--model", bundle, "--max-batch-size", "64", "--max-queue-delay-ms", "4000"
    )
    x = digit_images(8)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    answers: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        answers[i] = httpx.post(
            f"{agent.url}/v2/models/digits/infer",
            json=json_request("pixels", x[i : i + 1]),
            timeout=60,
        )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 3.5
    while metric(httpx.get(f"{agent.url}/metrics").text, "edgedl_queue_depth") < 8:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.02)
    agent.proc.send_signal(signal.SIGTERM)
    while httpx.get(f"{agent.url}/v2/health/ready").status_code != 503:
        time.sleep(0.01)
    refused = httpx.post(f"{agent.url}/v2/models/digits/infer", json=json_request("pixels", x[:1]))
    assert refused.status_code == 503
    assert "shutting down" in refused.json()["error"]
    for t in threads:
        t.join(60)
    assert agent.proc.wait(60) == 0
    assert sorted(answers) == list(range(8))
    for i, response in answers.items():
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(output_of(response, "output_0"), expected[i : i + 1], atol=1e-6)
    assert "finishing 8 requests in flight" in agent.output


@pytest.mark.slow
def test_serve_reads_the_config_file_and_environment_overrides(
    digits_bundle: Any, tmp_path: Path
) -> None:
    from tests.ports import free_port

    config = tmp_path / "agent.toml"
    config.write_text(f'[server]\nport = 1\n\n[[models]]\npath = "{digits_bundle("onnx-fp32")}"\n')
    port = free_port()
    env = {**os.environ, "EDGEDL_AGENT__SERVER__PORT": str(port)}
    proc = subprocess.Popen(
        [EDGEDL, "agent", "serve", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.1)
        meta = httpx.get(f"http://127.0.0.1:{port}/v2/models/digits").json()
        assert meta["platform"] == "onnxruntime_onnx"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_install_service_dry_run_prints_a_hardened_notify_unit(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[store]\npath = "/srv/edgedl-store"\n')
    result = run_edgedl("agent", "install-service", "--config", config, "--dry-run")
    assert result.code == 0, result.stderr
    unit = result.stdout
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "User=edgedl",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/edgedl-store",
        "NoNewPrivileges=yes",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines(), line
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(f"agent serve --config {config}")
    assert os.access(exec_start.removeprefix("ExecStart=").split()[0], os.X_OK)


def test_install_service_writes_the_unit_where_asked(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("")
    out = tmp_path / "units" / "edgedl-agent.service"
    result = run_edgedl(
        "agent", "install-service", "--config", config, "--output", out,
        "--user", "pi", "--watchdog-sec", "20",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    unit = out.read_text()
    assert "User=pi" in unit.splitlines()
    assert "WatchdogSec=20" in unit.splitlines()
    assert "ReadWritePaths=/var/lib/edgedl" in unit.splitlines()
    assert "systemctl enable --now edgedl-agent" in result.stdout
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        problems = [
            line
            for line in check.stderr.splitlines()
            if "edgedl-agent.service" in line and "Unknown" in line
        ]
        assert problems == [], check.stderr


def test_install_service_refuses_a_missing_config_in_one_line(tmp_path: Path) -> None:
    result = run_edgedl("agent", "install-service", "--config", tmp_path / "none.toml",
                        "--output", tmp_path / "x.service")  # fmt: skip
    assert result.code != 0
    assert "config file not found" in result.last_error_line
    assert not (tmp_path / "x.service").exists()
