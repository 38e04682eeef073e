"""A RabbitMQ node of the test's own with its MQTT plugin (Debian's ``rabbitmq-server``).

The system RabbitMQ (127.0.0.1:5672, node ``rabbit@localhost``) is never touched:
:class:`RabbitBroker` starts another node of the same installation under its own node name,
AMQP and distribution ports, with its database (mnesia), logs, cookie (``HOME``), enabled
plugins (``[rabbitmq_mqtt].``) and config in the test's folder, and an MQTT listener on a free
port. It registers with the machine's epmd as any node does. :meth:`~RabbitBroker.stop` then
:meth:`~RabbitBroker.start` keeps the database, so durable sessions (the queues of
``clean_session=false`` clients) and retained messages survive the restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.mqtt_broker import port_answers
from tests.ports import free_port

#: The server script that runs the node as the calling user (``/usr/sbin/rabbitmq-server``
#: switches to the rabbitmq user and reads the system's rabbitmq-env.conf).
RABBITMQ_SERVER = next(
    (p for p in ("/usr/lib/rabbitmq/bin/rabbitmq-server",) if Path(p).exists()), None
)


@dataclass
class RabbitBroker:
    """A ``rabbitmq-server`` node with the MQTT plugin on free ports, its state in ``folder``."""

    folder: Path
    port: int = field(default_factory=free_port)  # MQTT
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``: the MQTT listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        path = self.folder / "rabbitmq.out"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def _environment(self) -> dict[str, str]:
        f = self.folder
        (f / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (f / "rabbitmq-env.conf").write_text("")  # not the system's (its NODENAME)
        (f / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.host}:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}\n"
            "mqtt.allow_anonymous = true\n"
        )
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(f),  # the Erlang cookie of this node
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": f"edgedl-test-{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(f / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(f / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(f / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(f / "mnesia"),
            "RABBITMQ_LOG_BASE": str(f / "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(f / "plugins-expand"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self, timeout: float = 120) -> None:
        """Start the node and wait until its MQTT listener answers (20-60 s here)."""
        assert RABBITMQ_SERVER is not None, "rabbitmq-server is not installed"
        self.folder.mkdir(parents=True, exist_ok=True)
        env = self._environment()
        with open(self.folder / "rabbitmq.out", "ab") as out:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # the script's beam, epmd-less children: one group
            )
        deadline = time.monotonic() + timeout
        while not port_answers(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rabbitmq-server did not start:\n{self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to the node (a clean shutdown: durable queues stay on disk), then wait."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError):  # what is left (erl_child_setup)
            os.killpg(proc.pid, signal.SIGKILL)
