"""A Debian root booted with systemd as PID 1 (``systemd-nspawn -b``), and commands run in it.

The root is booted with ``--volatile=overlay``: it is mounted read-only with a tmpfs on
top, so whatever a test writes (users, units, the journal) goes away with the container and
the cached root stays as built. ``--register=no --keep-unit`` let it start on a host whose
PID 1 is not systemd (no machined, no system bus). There is no network namespace: the
container shares the host network, so its services answer on host ports.

Commands run in the container through ``nsenter`` into all namespaces of its PID 1, which
needs nothing from the host's init either.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


class BootedMachine:
    """A running ``systemd-nspawn -b`` container; :meth:`close` powers it off."""

    def __init__(self, root: Path, name: str, binds: dict[Path, str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("wb")
        argv = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={root}",
            "--volatile=overlay",
            "--register=no",
            "--keep-unit",
            f"--machine={name}",
            *(f"--bind-ro={host}:{inside}" for host, inside in binds.items()),
            "--boot",
        ]
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.leader = 0

    def wait_booted(self, timeout: float = 120) -> float:
        """Wait until systemd says the system is up; the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while not self.leader:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd-nspawn did not start:\n{self.output}")
            self.leader = self._systemd_pid()
            time.sleep(0.1)
        state = ""
        while state not in ("running", "degraded"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not boot ({state}):\n{self.output}")
            remaining = max(1.0, deadline - time.monotonic())
            try:
                state = self.run("systemctl", "is-system-running", "--wait", timeout=remaining)
            except subprocess.CalledProcessError as exc:
                state = (exc.stdout or "").strip()
                time.sleep(0.2)
        return time.monotonic() - started

    def _systemd_pid(self) -> int:
        """The container's PID 1 (host pid): nspawn's child once it has become systemd.

        nspawn forks twice on the way; the intermediate processes are not it.
        """
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            for pid in children.split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        except OSError:
            pass
        return 0

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exec(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``argv`` in the container as root; the completed process (any exit status)."""
        command = ["nsenter", f"--target={self.leader}", "--all", "--", *argv]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def run(self, *argv: str, timeout: float = 120) -> str:
        """``argv`` in the container; its stdout, stripped (CalledProcessError on failure)."""
        proc = self.exec(*argv, timeout=timeout)
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc.stdout.strip()

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        text = self.run("systemctl", "show", unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def close(self, timeout: float = 60) -> None:
        """Power the container off (SIGKILL if it does not go), and forget its state."""
        if self.proc.poll() is None:
            leader = self._systemd_pid()
            if leader:
                # SIGRTMIN+4 asks systemd for a clean poweroff.
                os.kill(leader, signal.SIGRTMIN + 4)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._log.close()
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
