"""The agent as a systemd service under a real systemd (PID 1 of a ``systemd-nspawn -b`` root).

An x86 Debian bookworm root (debootstrap, cached outside the clone with the agent's venv
in it, :mod:`tests.platform.rootfs`) is booted; this checkout's wheel is installed there and
the unit is the one ``edgedl agent install-service`` writes, set up as
docs/deploy-raspberry-pi.md tells a user to. The container shares the host network, so the
agent answers on a host port. Skipped, with the reason, where the machine cannot boot one
(not root, no systemd-nspawn); ``python -m tests.platform.rootfs --systemd --agent`` and
docs/platforms.md show the same by hand.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgedl import runtime
from tests.agent.serving_helpers import digit_images, json_request, output_of, send_and_wait_queued
from tests.platform.conftest import CHECKOUT
from tests.platform.nspawn import BootedMachine
from tests.platform.rootfs import (
    SYSTEMD_PACKAGES,
    RootfsSpec,
    ensure_agent_venv,
    ensure_rootfs,
    host_arch,
    locked,
    missing_requirements,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow

UNIT = "edgedl-agent.service"
STORE = "/var/lib/edgedl"
WATCHDOG_SEC = 3


@dataclass
class Service:
    """The booted machine with the agent's unit installed (not started)."""

    machine: BootedMachine
    url: str
    bundle: Path

    def props(self, *names: str) -> dict[str, str]:
        return self.machine.show(UNIT, *names)

    def main_pid(self) -> int:
        return int(self.props("MainPID")["MainPID"])

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 90) -> float:
        started = time.monotonic()
        while not check():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{what} not within {timeout} s: {self.props()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def ready_over_http(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def journal(self) -> str:
        return self.machine.run("journalctl", "--no-pager", "-o", "cat", "-u", UNIT)

    def start(self) -> float:
        """``systemctl start`` (it returns once the agent sent READY=1); the seconds taken."""
        started = time.monotonic()
        self.machine.run("systemctl", "start", UNIT, timeout=120)
        return time.monotonic() - started


@pytest.fixture(scope="module")
def service(
    edgedl_wheel: Path, digits_bundle: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    reason = missing_requirements(host_arch(), "systemd-nspawn", "nsenter")
    if reason:
        pytest.skip(f"systemd boot check: {reason}")
    root = ensure_rootfs(RootfsSpec(host_arch(), SYSTEMD_PACKAGES))
    venv, _ = ensure_agent_venv(root, CHECKOUT / "pyproject.toml")
    share = tmp_path_factory.mktemp("nspawn-share")
    share.chmod(0o755)
    bundle = digits_bundle("tflite-int8")
    subprocess.run(["cp", "-r", str(bundle), str(share / "digits")], check=True)
    subprocess.run(["cp", str(edgedl_wheel), str(share)], check=True)
    subprocess.run(["chmod", "-R", "a+rX", str(share)], check=True)
    port = free_port()
    (share / "agent.toml").write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f'[[models]]\npath = "/srv/edgedl/digits"\nmax_batch_size = 8\n'
        f'max_queue_delay_ms = 3000\n\n[store]\npath = "{STORE}"\n'
    )
    name = f"edgedl-test-{os.getpid()}"
    with locked(root.with_name(root.name + ".use.lock")):
        machine = BootedMachine(
            root, name, {share: "/srv/edgedl"}, tmp_path_factory.mktemp("nspawn") / "boot.log"
        )
        try:
            boot_s = machine.wait_booted()
            wheel = f"/srv/edgedl/{edgedl_wheel.name}"
            setup = (
                f"{venv}/bin/pip install --quiet --no-deps --no-index --force-reinstall {wheel}"
                " && install -d /etc/edgedl && cp /srv/edgedl/agent.toml /etc/edgedl/"
                f" && {venv}/bin/edgedl agent install-service --config /etc/edgedl/agent.toml"
                f" --watchdog-sec {WATCHDOG_SEC}"
                " && useradd --system --no-create-home --shell /usr/sbin/nologin edgedl"
                f" && install -d -o edgedl -g edgedl {STORE}"
                " && systemctl daemon-reload"
            )
            machine.run("sh", "-c", setup, timeout=300)
            print(f"\nsystemd booted in {boot_s:.1f} s (nspawn, volatile overlay)")
            yield Service(machine, f"http://127.0.0.1:{port}", bundle)
        finally:
            machine.close()


def test_start_reaches_ready_through_sd_notify_and_logs_go_to_the_journal(
    service: Service,
) -> None:
    unit = service.machine.run("systemctl", "cat", UNIT)
    assert "Type=notify" in unit and f"WatchdogSec={WATCHDOG_SEC}" in unit
    took = service.start()
    # Type=notify: start returns only after READY=1, so the agent answers at once.
    assert service.ready_over_http()
    props = service.props("ActiveState", "SubState", "StatusText", "User", "NRestarts")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert "serving digits:1" in props["StatusText"], props
    user = service.machine.run("stat", "-c", "%U", f"/proc/{service.main_pid()}")
    assert user == "edgedl"
    assert "edgedl agent serving digits:1" in service.journal()
    print(f"\nsystemctl start -> READY=1 in {took:.1f} s")


def in_service_namespace(service: Service, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run as the service's user in the service's own mount namespace."""
    pid = service.main_pid()
    status = service.machine.run("cat", f"/proc/{pid}/status")
    uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
    gid = re.search(r"^Gid:\s+(\d+)", status, re.M)
    assert uid and gid, status
    return service.machine.exec(
        "nsenter",
        f"--target={pid}",
        "--mount",
        f"--setuid={uid[1]}",
        f"--setgid={gid[1]}",
        "--",
        "sh",
        "-c",
        script,
    )


def test_hardening_holds_in_the_service_namespace(service: Service) -> None:
    if not service.ready_over_http():
        service.start()
    pid = service.main_pid()
    status = service.machine.run("cat", f"/proc/{pid}/status")
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    for outside in ("/etc/edgedl/probe", "/usr/local/probe", "/opt/probe"):
        denied = in_service_namespace(service, f"touch {outside}")
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
    allowed = in_service_namespace(service, f"touch {STORE}/probe && echo written")
    assert allowed.returncode == 0 and allowed.stdout.strip() == "written", allowed
    home = in_service_namespace(service, "ls /root /home")
    assert home.returncode != 0, home
    # The same paths are writable to root outside the service: the unit makes the difference.
    assert service.machine.exec("touch", "/etc/edgedl/probe").returncode == 0


def test_watchdog_restarts_a_hung_agent(service: Service) -> None:
    if not service.ready_over_http():
        service.start()
    before = int(service.props("NRestarts")["NRestarts"])
    hung = service.main_pid()
    service.machine.run("sh", "-c", f"kill -STOP {hung}")
    took = service.wait_for(
        "a restart after the watchdog",
        lambda: (
            int(service.props("NRestarts")["NRestarts"]) > before
            and service.props("ActiveState")["ActiveState"] == "active"
        ),
    )
    assert service.main_pid() != hung
    service.wait_for("ready again", service.ready_over_http)
    assert "Watchdog timeout" in service.machine.run("journalctl", "--no-pager", "-u", UNIT)
    print(
        f"\nwatchdog ({WATCHDOG_SEC} s) restarted a SIGSTOPped agent; active again in {took:.1f} s"
    )


def test_kill_9_is_restarted_by_restart_on_failure(service: Service) -> None:
    if not service.ready_over_http():
        service.start()
    before = int(service.props("NRestarts")["NRestarts"])
    killed = service.main_pid()
    service.machine.run("sh", "-c", f"kill -KILL {killed}")
    service.wait_for(
        "a restart after SIGKILL",
        lambda: (
            int(service.props("NRestarts")["NRestarts"]) > before
            and service.props("ActiveState")["ActiveState"] == "active"
        ),
    )
    assert service.main_pid() != killed
    service.wait_for("ready again", service.ready_over_http)
    assert "status=9/KILL" in service.machine.run("journalctl", "--no-pager", "-u", UNIT)


def test_stop_drains_requests_in_flight_and_exits_0(service: Service) -> None:
    if not service.ready_over_http():
        service.start()
    x = digit_images(4)
    expected = runtime.load(service.bundle).run({"pixels": x})["output_0"]
    answers: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        answers[i] = httpx.post(
            f"{service.url}/v2/models/digits/infer",
            json=json_request("pixels", x[i : i + 1]),
            timeout=60,
        )

    # max_queue_delay_ms = 3000 keeps the requests queued while systemctl stop arrives.
    threads = send_and_wait_queued(service.url, send, 4, within=2.5)
    stopper = threading.Thread(target=service.machine.run, args=("systemctl", "stop", UNIT))
    stopper.start()
    for t in threads:
        t.join(60)
    stopper.join(90)
    props = service.props("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert props["ActiveState"] == "inactive", props
    assert props["Result"] == "success" and props["ExecMainStatus"] == "0", props
    assert sorted(answers) == [0, 1, 2, 3]
    for i, response in answers.items():
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(output_of(response, "output_0"), expected[i : i + 1], atol=1e-6)
    journal = service.journal()
    assert "finishing 4 requests in flight" in journal, journal[-2000:]
