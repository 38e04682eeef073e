"""A NATS server of the test's own, with its MQTT 3.1.1 listener (Debian's ``nats-server``).

NATS speaks MQTT when its config has an ``mqtt {}`` block, which needs JetStream (sessions,
retained messages and QoS 1 messages are kept in JetStream streams) and a ``server_name``.
:class:`NatsBroker` writes such a config with free ports and a store in the test's folder;
:meth:`~NatsBroker.stop` then :meth:`~NatsBroker.start` keeps the store, so sessions and
retained messages survive the restart as they would in production. The system NATS on
127.0.0.1:4222 is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.mqtt_broker import port_answers
from tests.ports import free_port

NATS_SERVER = shutil.which("nats-server") or (
    "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None
)


@dataclass
class NatsBroker:
    """``nats-server`` with JetStream and MQTT on free ports, its state under ``folder``."""

    folder: Path
    port: int = field(default_factory=free_port)  # MQTT
    nats_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``: the MQTT listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        path = self.folder / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        """Start the server and wait until its MQTT listener answers."""
        assert NATS_SERVER is not None, "nats-server is not installed"
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "nats.conf"
        conf.write_text(
            f'server_name: "edgedl-test-{self.port}"\n'
            f"listen: {self.host}:{self.nats_port}\n"
            f'jetstream {{ store_dir: "{self.folder / "jetstream"}" }}\n'
            f"mqtt {{ listen: {self.host}:{self.port} }}\n"
        )
        with open(self.folder / "nats.log", "ab") as log:
            self.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        while not port_answers(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start:\n{self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (JetStream state stays on disk), then wait."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
