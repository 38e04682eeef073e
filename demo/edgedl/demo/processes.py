"""The processes the demo starts: each a subprocess with its own log, stopped in order.

A child runs in its own session so that Ctrl-C in the terminal reaches only the demo, which
then stops the agent before the collector (the agent's last telemetry window still arrives)
and the collector before the broker.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from edgedl.errors import ConfigError


def edgedl_command() -> list[str]:
    """How to run this installation's ``edgedl`` CLI in a child process."""
    script = Path(sys.executable).with_name("edgedl")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from edgedl.cli import main; main()"]


class Child:
    """One started process: its name, command and log file; ``stop()`` ends it for good."""

    def __init__(self, name: str, command: Sequence[str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(command),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the child wrote, for an error message."""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Wait until ``ready()``; raise :class:`ConfigError` if the child exits or is slow."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise ConfigError(
                    f"the {self.name} exited with code {self.proc.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ConfigError(f"the {self.name} did not start in {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait, then SIGKILL if it will not go; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def check_port_free(port: int, option: str, host: str = "127.0.0.1") -> None:
    """Raise :class:`ConfigError` naming ``option`` when ``port`` cannot be listened on."""
    if port == 0:
        return
    with socket.socket() as s:
        # As the servers bind: connections of a previous run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            reason = "in use" if exc.errno == 98 else (exc.strerror or "unavailable")
            raise ConfigError(
                f"port {port} ({option}) is {reason}: pick another with {option} PORT"
            ) from None


_LOWEST_PORT = 10_000
_ports_given: set[int] = set()
_port_choice = random.Random()  # seeded by the OS: two demos pick different ports


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _LOWEST_PORT + 1000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nobody listens on and no client connection will take.

    Binding port 0 would hand out a port of the kernel's ephemeral range, where every
    outgoing connection takes its local port too: in the seconds before a server child binds
    it, a client connection could take it ("address already in use"). Ports below that range
    are never given to client connections; ports handed out before are not handed out again.
    """
    high = _ephemeral_low()
    for _ in range(1000):
        port = _port_choice.randrange(_LOWEST_PORT, high)
        if port in _ports_given:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise ConfigError(f"no free port on {host} between {_LOWEST_PORT} and {high}")


def pick_port(port: int, host: str = "127.0.0.1") -> int:
    """``port`` itself, or a free port (:func:`free_port`) when it is 0."""
    return port or free_port(host)


def check_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and prove the demo may write there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".edgedl-demo-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"cannot write to the work folder {folder}: {exc.strerror or exc} "
            "(pick another with --workdir)"
        ) from None
    return folder.resolve()


#: CONNACK reason paho reports when a 3.1.1-only broker answers an MQTT 5 CONNECT.
_UNSUPPORTED_PROTOCOL = 132


def broker_answers(url: str, timeout: float = 3.0) -> bool:
    """Whether an MQTT broker at ``url`` answers a CONNECT.

    Accepted, or refused only for asking for MQTT 5: a 3.1.1 broker answers too (the agent and
    the collector fall back to 3.1.1).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    if parts.scheme == "mqtts":
        return True  # TLS settings are the agent's and collector's business; the port is open
    answered = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        failed = getattr(reason, "is_failure", True)
        if not failed or getattr(reason, "value", None) == _UNSUPPORTED_PROTOCOL:
            answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        return answered.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()


def clear_retained(url: str, topic: str, timeout: float = 10.0) -> bool:
    """Remove the retained message of ``topic`` on the broker at ``url`` (an empty retained
    publish, QoS 1, MQTT 3.1.1 so that every broker takes it); whether the broker acknowledged."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
    if parts.scheme == "mqtts":
        client.tls_set()
    try:
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=10)
    except OSError:
        return False
    client.loop_start()
    try:
        info = client.publish(topic, b"", qos=1, retain=True)
        info.wait_for_publish(timeout)
        return info.is_published()
    except (RuntimeError, ValueError):
        return False
    finally:
        client.disconnect()
        client.loop_stop()


BROKER_CONFIG = """\
# Written by `edgedl demo`: a throwaway broker on localhost, tuned as docs/collector.md says.
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_inflight_messages 1000
max_queued_messages 100000
max_queued_bytes 0
persistence false
"""


#: Names the mosquitto binary; a path that does not exist means "not installed".
MOSQUITTO_ENV = "EDGEDL_MOSQUITTO"
#: What the demo says it started where mosquitto is not installed.
EMBEDDED = "an embedded amqtt broker (mosquitto not installed)"


def find_mosquitto() -> str | None:
    """The ``mosquitto`` binary: ``$EDGEDL_MOSQUITTO`` when set, else on PATH or in sbin."""
    named = os.environ.get(MOSQUITTO_ENV)
    if named is not None:
        return named if Path(named).is_file() else None
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )


def start_broker(folder: Path) -> tuple[Child, str, str]:
    """Start a broker on a free local port: ``mosquitto`` where installed, else amqtt.

    Returns the child, its URL and what it is (``"mosquitto"`` or :data:`EMBEDDED`).
    :class:`ConfigError` when neither is installed.
    """
    binary = find_mosquitto()
    if binary is not None:
        return (*start_mosquitto(folder, binary), "mosquitto")
    if importlib.util.find_spec("amqtt") is None:
        raise ConfigError(
            "no MQTT broker answers, mosquitto is not installed and neither is amqtt: install "
            "one (apt install mosquitto, or pip install 'edgedl[demo]') or point the demo at "
            "a broker with --mqtt or EDGEDL_MQTT_URL"
        )
    port = pick_port(0)
    broker = Child(
        "broker",
        [sys.executable, "-m", "edgedl.demo.embedded_broker", "--port", str(port)],
        folder / "amqtt.log",
    )
    url = f"mqtt://127.0.0.1:{port}"
    broker.wait_until(lambda: broker_answers(url, timeout=1.0), timeout=30)
    return broker, url, EMBEDDED


def start_mosquitto(folder: Path, binary: str) -> tuple[Child, str]:
    """Start the ``mosquitto`` at ``binary`` on a free local port; return it and its URL."""
    port = pick_port(0)
    config = folder / "mosquitto.conf"
    config.write_text(BROKER_CONFIG.format(port=port), encoding="utf-8")
    broker = Child("broker", [binary, "-c", str(config)], folder / "mosquitto.log")
    url = f"mqtt://127.0.0.1:{port}"
    broker.wait_until(lambda: broker_answers(url, timeout=1.0), timeout=15)
    return broker, url


__all__ = [
    "BROKER_CONFIG",
    "EMBEDDED",
    "MOSQUITTO_ENV",
    "Child",
    "broker_answers",
    "check_port_free",
    "check_writable",
    "clear_retained",
    "edgedl_command",
    "find_mosquitto",
    "free_port",
    "pick_port",
    "start_broker",
    "start_mosquitto",
]
