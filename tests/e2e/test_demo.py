"""``edgedl demo``: the whole loop in one command, and nothing left running afterwards.

* On its own ports, with no broker at EDGEDL_MQTT_URL, the demo starts mosquitto itself,
  shows the drift alert firing, exits 0, and every process it started is gone, its ports
  free, its temporary folder removed. The same where mosquitto is not installed
  (EDGEDL_MOSQUITTO names a binary that does not exist): it starts its embedded amqtt broker,
  which speaks MQTT 3.1.1 only, and the agent and the collector fall back to 3.1.1.
* With ``--mqtt`` naming a running broker and ``--keep`` it uses that broker, stays up
  (the dashboard answers) until Ctrl-C, then stops what it started and leaves the broker.
* A port in use, a work folder it cannot write, a broker that does not answer: one line on
  stderr and a non-zero exit, before any training.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from tests.conftest import EDGEDL
from tests.mqtt_broker import MosquittoBroker
from tests.ports import free_port


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # As a server binds (uvicorn, mosquitto): connections in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DemoRun:
    """``edgedl demo`` as a subprocess; records every process it starts while it runs."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [EDGEDL, "demo", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            # Ctrl-C as a terminal delivers it: a suite started in the background of a shell
            # without job control inherits SIGINT ignored, and so would the demo.
            preexec_fn=_default_sigint,
        )
        self.descendants: dict[int, psutil.Process] = {}
        self.names: dict[int, str] = {}
        self.cmdlines: dict[int, str] = {}

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def watch_until(self, done: str | None = None, timeout: float = 600) -> None:
        """Record descendants until the demo exits (or prints ``done``)."""
        parent = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"the demo is still running:\n{self.output}"
            try:
                children = parent.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for child in children:
                self.descendants.setdefault(child.pid, child)
                # Read again each time: a child first seen between fork and exec still shows
                # the demo's own command line.
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    self.names[child.pid] = child.name()
                    self.cmdlines[child.pid] = " ".join(child.cmdline())
            if done is not None and done in self.output:
                return
            time.sleep(0.2)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def left_running(self) -> list[str]:
        """Descendants still alive (psutil checks the pid was not reused)."""
        return [f"{p.pid} {p.name()}" for p in self.descendants.values() if p.is_running()]


@pytest.fixture
def demo_run(tmp_path: Path) -> Iterator[list[DemoRun]]:
    runs: list[DemoRun] = []
    yield runs
    for run in runs:  # a failed test must not leave a demo behind
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(10)
        for p in run.descendants.values():
            if p.is_running():
                p.kill()


def pids_printed(output: str) -> set[int]:
    return {int(p) for p in re.findall(r"\(pid (\d+)\)", output)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("broker", "started", "process"),
    [
        pytest.param("mosquitto", "started mosquitto", "mosquitto", id="mosquitto"),
        pytest.param("amqtt", "started an embedded amqtt broker (mosquitto not installed)",
                     "edgedl.demo.embedded_broker", id="amqtt"),
    ],
)  # fmt: skip
def test_demo_shows_the_drift_alert_and_stops_everything_it_started(
    demo_run: list[DemoRun], tmp_path: Path, broker: str, started: str, process: str
) -> None:
    http_port, agent_port, dead_broker = free_port(), free_port(), free_port()
    env = {"EDGEDL_MQTT_URL": f"mqtt://127.0.0.1:{dead_broker}"}
    if broker == "amqtt":
        pytest.importorskip("amqtt")
        env["EDGEDL_MOSQUITTO"] = str(tmp_path / "no-such-mosquitto")
    run = DemoRun(
        ["--http-port", str(http_port), "--agent-port", str(agent_port)],
        env,
        tmp_path / "demo.log",
    )
    demo_run.append(run)
    run.watch_until()
    assert run.wait() == 0, run.output
    out = run.output
    assert f"no MQTT broker answers at mqtt://127.0.0.1:{dead_broker}: {started}" in out
    assert "drift alert fired" in out
    assert f"dashboard: http://127.0.0.1:{http_port}/" in out
    assert "agent accuracy:" in out
    broker_port = int(re.search(r"broker at mqtt://127\.0\.0\.1:(\d+) \(pid", out)[1])  # type: ignore[index]
    # The agent, the collector and the broker: printed, seen running, and all gone now.
    commands = [run.cmdlines[pid] for pid in pids_printed(out) if pid in run.cmdlines]
    assert len(pids_printed(out)) == 3 and any(process in c for c in commands), out
    assert pids_printed(out) <= set(run.descendants)
    assert run.left_running() == []
    for name in ("agent", "collector", "broker"):
        assert re.search(rf"{name} \(pid \d+\) stopped, exit code 0", out), out
    for port in (http_port, agent_port, broker_port):
        assert port_is_free(port), f"port {port} still taken"
    workdir = Path(re.search(r"work folder (\S+)", out)[1])  # type: ignore[index]
    assert not workdir.exists(), "the temporary work folder was left behind"


@pytest.mark.slow
def test_demo_keep_stays_up_until_ctrl_c_and_leaves_a_broker_it_did_not_start(
    demo_run: list[DemoRun], tmp_path: Path
) -> None:
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    try:
        http_port, agent_port = free_port(), free_port()
        workdir = tmp_path / "work"
        run = DemoRun(
            ["--http-port", str(http_port), "--agent-port", str(agent_port),
             "--mqtt", broker.url, "--workdir", str(workdir), "--keep"],
            {},
            tmp_path / "demo.log",
        )  # fmt: skip
        demo_run.append(run)
        run.watch_until(done="press Ctrl-C")
        assert run.proc.poll() is None, run.output
        assert f"using the MQTT broker at {broker.url}" in run.output
        assert httpx.get(f"http://127.0.0.1:{http_port}/", timeout=5).status_code == 200
        alerts = httpx.get(f"http://127.0.0.1:{http_port}/api/v1/alerts", timeout=5).json()
        assert any(a["kind"] == "drift" and a["device"] == "demo-pi" for a in alerts)
        assert httpx.get(f"http://127.0.0.1:{agent_port}/v2/health/ready").status_code == 200
        run.proc.send_signal(signal.SIGINT)
        run.watch_until()
        assert run.wait() == 0, run.output
        assert run.left_running() == []
        assert len(pids_printed(run.output)) == 2  # agent and collector; not the broker
        assert port_is_free(http_port) and port_is_free(agent_port)
        assert broker.process is not None and broker.process.poll() is None  # not ours to stop
        assert (workdir / "collector.db").exists()  # --workdir is kept for a look
    finally:
        broker.stop()


def run_demo_fast(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EDGEDL, "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert "training" not in result.stdout  # it stopped before anything slow


@pytest.mark.parametrize("option", ["--http-port", "--agent-port"])
def test_a_port_in_use_is_one_line_and_a_non_zero_exit(option: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_demo_fast(option, str(port))
    assert_one_line_error(result, f"port {port}", option, "in use")


def test_a_work_folder_it_cannot_write_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    result = run_demo_fast("--workdir", str(a_file / "work"), "--http-port", "0",
                           "--agent-port", "0")  # fmt: skip
    assert_one_line_error(result, "cannot write to the work folder", "--workdir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
def test_a_read_only_work_folder_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = run_demo_fast("--workdir", str(locked / "work"), "--http-port", "0",
                           "--agent-port", "0")  # fmt: skip
    assert_one_line_error(result, "cannot write to the work folder")


def test_a_broker_named_with_mqtt_that_does_not_answer_is_one_line(tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"
    result = run_demo_fast("--mqtt", url, "--http-port", "0", "--agent-port", "0",
                           "--workdir", str(tmp_path / "w"))  # fmt: skip
    assert_one_line_error(result, f"no MQTT broker answers at {url}")


def test_a_collector_named_with_collector_that_does_not_answer_is_one_line(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_demo_fast("--collector", url, "--agent-port", "0",
                           "--workdir", str(tmp_path / "w"))  # fmt: skip
    assert_one_line_error(result, f"no collector subscribed to its broker answers at {url}")
