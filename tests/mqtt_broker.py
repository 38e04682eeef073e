"""Real Mosquitto brokers for tests, and a plain MQTT subscriber that records what arrives.

Import the fixtures you need into a test module (or a conftest.py)::

    from tests.mqtt_broker import mosquitto_broker, system_broker  # noqa: F401

* ``mosquitto_broker``: a ``mosquitto`` on a free port with persistence on, so ``stop()`` then
  ``start()`` keeps sessions and queued messages (an outage, not a wipe).
* ``tls_broker``: ``mqtts://`` with certificates made by the test (``TlsFiles``): the broker
  requires a client certificate and takes its CN as the user name; nobody is anonymous.
* ``password_broker``: ``allow_anonymous false`` with a password file (``mosquitto_passwd``):
  user ``device``, password ``s3cret``.
* ``system_broker``: the broker on 127.0.0.1:1883 when one answers, else a fresh one.

The broker config is the tuned one from docs (``set_tcp_nodelay``, large inflight and queue
limits): Mosquitto's defaults silently drop QoS 1 messages past 1000 queued per client.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TUNED_SETTINGS = """\
set_tcp_nodelay true
max_inflight_messages 1000
max_queued_messages 100000
max_queued_bytes 0
persistent_client_expiration 1d
"""


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class TlsFiles:
    """PEM files of a test PKI: a CA, the broker's certificate, one device's certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_name: str
    other_ca: Path
    """A CA that signed nothing here: trusting it instead of ``ca`` must fail."""


def make_tls_files(folder: Path, client_name: str = "pi-42") -> TlsFiles:
    """Make a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(k: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(c: x509.Certificate, path: Path) -> Path:
        path.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False
            )
            .sign(k, hashes.SHA256())
        )
        return k, cert

    def leaf(
        cn: str,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        usage: Any,
        san: list[x509.GeneralName] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        k = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return k, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("edgedl test CA")
    _, other_ca_cert = make_ca("some other CA")
    server_key, server_cert = leaf(
        "localhost",
        ca_key,
        ca_cert,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = leaf(client_name, ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        ca=write_cert(ca_cert, folder / "ca.pem"),
        server_cert=write_cert(server_cert, folder / "server.pem"),
        server_key=write_key(server_key, folder / "server.key"),
        client_cert=write_cert(client_cert, folder / "client.pem"),
        client_key=write_key(client_key, folder / "client.key"),
        client_name=client_name,
        other_ca=write_cert(other_ca_cert, folder / "other-ca.pem"),
    )


@dataclass
class MosquittoBroker:
    """A ``mosquitto`` process on a free port with a generated config and its own folder.

    Persistence is on: :meth:`stop` (SIGTERM, Mosquitto saves its state) then :meth:`start`
    keeps the port, sessions and queued messages.
    """

    folder: Path
    port: int = field(default_factory=free_port)
    tls: TlsFiles | None = None
    password_file: Path | None = None
    extra: str = ""
    host: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (``mqtts://`` with TLS)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def log(self) -> str:
        """What the broker logged so far."""
        path = self.folder / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with."""
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.folder}/",
            "autosave_interval 1",
            f"log_dest file {self.folder}/mosquitto.log",
            "log_type all",
            "connection_messages true",
            TUNED_SETTINGS,
        ]
        if os.geteuid() == 0:
            # Run as root, Mosquitto drops to user "mosquitto", who cannot write to the
            # test's private folder: no log, no persistence. Keep the test's user.
            lines.append("user root")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                "allow_anonymous false",
            ]
        elif self.password_file is not None:
            lines += [f"password_file {self.password_file}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        lines.append(self.extra)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart) the broker and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "mosquitto.conf"
        conf.write_text(self.config_text())
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.process.returncode}):\n{self.log}")
            if port_answers(self.host, self.port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log}")

    def stop(self) -> None:
        """Stop the broker gracefully (it saves sessions and queued messages to disk)."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Message:
    """One message a :class:`Recorder` received."""

    topic: str
    payload: bytes
    retain: bool
    content_type: str | None
    received: float


class Recorder:
    """A plain paho subscriber that keeps every message it gets, for assertions.

    Persistent session (QoS 1, clean_start off) so messages published while it reconnects
    after a broker restart are queued for it rather than lost.
    """

    def __init__(
        self,
        url: str,
        topics: list[str],
        client_id: str | None = None,
        tls: TlsFiles | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._topics = topics
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"recorder-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if tls is not None:
            self.client.tls_set(
                ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key)
            )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 1.0)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(host, int(port), keepalive=10, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.client.loop_stop()
            raise RuntimeError(f"recorder could not subscribe at {url}")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self._topics])

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        ctype = getattr(msg.properties, "ContentType", None) if msg.properties else None
        with self._cond:
            self.messages.append(
                Message(msg.topic, bytes(msg.payload), bool(msg.retain), ctype, time.monotonic())
            )
            self._cond.notify_all()

    def on(self, topic_suffix: str) -> list[Message]:
        """Messages so far whose topic ends with ``topic_suffix``."""
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(topic_suffix)]

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> bool:
        """Wait until ``predicate(messages)`` is true; whether it became true in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(list(self.messages)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()


class MQTT311Only:
    """A TCP front for a real broker that behaves like a broker too old for MQTT 5.

    An MQTT 5 CONNECT gets the 3.1.1 answer "unacceptable protocol version" (CONNACK return
    code 1) and the connection is closed (``connack=False``: closed without an answer, as some
    brokers do); any other connection is piped to the broker behind.
    Mosquitto itself cannot be told to refuse MQTT 5, so this is how a test meets an old one.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1", connack: bool = True) -> None:
        self.host = host
        self.target_port = target_port
        self.connack = connack
        self.refused_v5 = 0
        self.piped = 0
        self._server = socket.create_server((host, 0))
        self.port = int(self._server.getsockname()[1])
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` of the front."""
        return f"mqtt://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_packet(conn: socket.socket) -> bytes:
        def read(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise OSError("closed")
                data += chunk
            return data

        header = read(1)
        length_bytes, length, multiplier = b"", 0, 1
        while True:
            b = read(1)
            length_bytes += b
            length += (b[0] & 0x7F) * multiplier
            multiplier *= 128
            if not b[0] & 0x80:
                break
        return header + length_bytes + read(length)

    def _serve(self, conn: socket.socket) -> None:
        try:
            packet = self._read_packet(conn)
            body_start = 2
            while packet[body_start - 1] & 0x80:
                body_start += 1
            protocol_level = packet[body_start + 6]  # after the name "MQTT" and its length
            if protocol_level == 5:
                self.refused_v5 += 1
                if self.connack:
                    conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                return
            upstream = socket.create_connection((self.host, self.target_port))
            upstream.sendall(packet)
            self.piped += 1
        except OSError:
            conn.close()
            return
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting connections."""
        self._closing.set()
        self._server.close()


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free port, persistent, stopped at the end of the test."""
    broker = MosquittoBroker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    """A test CA with a server certificate for 127.0.0.1 and a client certificate."""
    return make_tls_files(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[MosquittoBroker]:
    """``mqtts://`` Mosquitto that requires a client certificate signed by the test CA."""
    broker = MosquittoBroker(tmp_path / "tls-broker", tls=tls_files)
    broker.start()
    yield broker
    broker.stop()


PASSWORD_USER = "device"
PASSWORD = "s3cret"


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Mosquitto refusing anonymous clients; user ``device`` / password ``s3cret``."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    folder = tmp_path / "password-broker"
    folder.mkdir()
    pw_file = folder / "passwd"
    subprocess.run(
        [passwd, "-b", "-c", str(pw_file), PASSWORD_USER, PASSWORD],
        check=True,
        capture_output=True,
    )
    broker = MosquittoBroker(folder, password_file=pw_file)
    broker.start()
    yield broker
    broker.stop()


@dataclass
class SystemBroker:
    """A broker somebody else runs (or one this fixture started): only its address."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """``mqtt://host:port``."""
        return f"mqtt://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def system_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemBroker]:
    """The broker on 127.0.0.1:1883 when it answers; else a Mosquitto started for the session."""
    if port_answers("127.0.0.1", 1883):
        yield SystemBroker("127.0.0.1", 1883)
        return
    broker = MosquittoBroker(tmp_path_factory.mktemp("system-broker"))
    broker.start()
    with contextlib.ExitStack() as stack:
        stack.callback(broker.stop)
        yield SystemBroker(broker.host, broker.port)
