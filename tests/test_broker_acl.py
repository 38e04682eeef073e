"""The Mosquitto ACL that docs/security.md ships: each device writes only its own topics.

A real Mosquitto with a password file and ``collector/edgedl/collector/mosquitto.acl``; a
device's user name is ``<fleet>/<device>``. Device ``factory-7/pi-42`` may publish its own
telemetry, which the collector (on a shared subscription, as it runs by default) receives;
its telemetry under another device's id, in its own fleet or in another (even where a
device of that name exists), is refused and never delivered; the collector cannot pose as a
device; a device cannot read another device's desired state, in any fleet.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.mqtt_broker import MosquittoBroker, make_tls_files

ACL = Path(__file__).resolve().parents[1] / "collector/edgedl/collector/mosquitto.acl"
USERS = {
    "factory-7/pi-42": "pw-42",
    "factory-7/pi-7": "pw-7",
    "factory-9/pi-42": "pw-9-42",
    "pi-42": "pw-legacy",  # a user name that is only a device id, as before fleets were bound
    "edgedl-collector": "pw-collector",
}
NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16  # accepted; nobody listens to it


class Client:
    """A connected MQTT 5 client that records what it receives and each PUBACK's reason."""

    def __init__(self, broker: MosquittoBroker, user: str, tls: bool = False) -> None:
        self.user = user
        self.received: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.granted: list[int] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"acl-test-{user.replace('/', '-')}",
            protocol=mqtt.MQTTv5,
        )
        if broker.tls is not None and tls:
            self.client.tls_set(
                str(broker.tls.ca), str(broker.tls.client_cert), str(broker.tls.client_key)
            )
        else:
            self.client.username_pw_set(user, USERS[user])
        self.client.on_message = lambda _c, _u, m: self.received.append((m.topic, m.payload))
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            assert time.monotonic() < deadline, f"{user} could not connect"
            time.sleep(0.02)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        self.acks[mid] = reason.value

    def _on_subscribe(
        self, _c: Any, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        self.granted = [r.value for r in reasons]
        self._subscribed.set()

    def subscribe(self, topic: str) -> list[int]:
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(10)
        return self.granted

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1; return the PUBACK's reason code (0: accepted)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        deadline = time.monotonic() + 10
        while info.mid not in self.acks:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    passwords = tmp_path / "passwords"
    for i, (user, password) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwords), user, password], check=True
        )
    broker = MosquittoBroker(tmp_path / "broker", password_file=passwords, extra=f"acl_file {ACL}")
    broker.start()
    yield broker
    broker.stop()


def test_a_device_writes_only_its_own_topics(acl_broker: MosquittoBroker) -> None:
    collector = Client(acl_broker, "edgedl-collector")
    device = Client(acl_broker, "factory-7/pi-42")
    try:
        assert collector.subscribe("$share/edgedl-collectors/edgedl/v1/+/+/telemetry") == [1]
        assert device.publish("edgedl/v1/factory-7/pi-42/telemetry", b"mine") == 0
        assert device.publish("edgedl/v1/factory-7/pi-7/telemetry", b"forged") == NOT_AUTHORIZED
        # Another fleet: neither a device of the same name there, nor any other.
        assert device.publish("edgedl/v1/factory-9/pi-42/telemetry", b"forged") == NOT_AUTHORIZED
        assert device.publish("edgedl/v1/factory-9/pi-42/status", b"forged") == NOT_AUTHORIZED
        assert device.publish("edgedl/v1/factory-9/pi-7/events", b"forged") == NOT_AUTHORIZED
        assert collector.publish("edgedl/v1/factory-7/pi-7/telemetry", b"forged") == NOT_AUTHORIZED
        assert (
            device.publish("edgedl/v1/factory-7/pi-42/status", b"online") == NO_MATCHING_SUBSCRIBERS
        )
        deadline = time.monotonic() + 5
        while not collector.received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a forged message, had it been let through, would be here by now
        assert collector.received == [("edgedl/v1/factory-7/pi-42/telemetry", b"mine")]
    finally:
        collector.close()
        device.close()


def test_a_device_reads_only_its_own_desired_state(acl_broker: MosquittoBroker) -> None:
    collector = Client(acl_broker, "edgedl-collector")
    device = Client(acl_broker, "factory-7/pi-42")
    try:
        # Mosquitto grants the subscription and checks read access per message it delivers.
        device.subscribe("edgedl/v1/factory-7/+/desired")
        device.subscribe("edgedl/v1/factory-9/+/desired")
        device.subscribe("edgedl/v1/+/+/telemetry")
        assert collector.publish("edgedl/v1/factory-7/pi-7/desired", b"theirs") == 0
        assert collector.publish("edgedl/v1/factory-9/pi-42/desired", b"namesake's") == 0
        assert collector.publish("edgedl/v1/factory-7/pi-42/desired", b"mine") == 0
        other = Client(acl_broker, "factory-7/pi-7")
        assert other.publish("edgedl/v1/factory-7/pi-7/telemetry", b"x") == 0
        other.close()
        deadline = time.monotonic() + 5
        while not device.received and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert device.received == [("edgedl/v1/factory-7/pi-42/desired", b"mine")]
    finally:
        collector.close()
        device.close()


def test_the_collector_reads_every_fleet(acl_broker: MosquittoBroker) -> None:
    collector = Client(acl_broker, "edgedl-collector")
    devices = [Client(acl_broker, "factory-7/pi-42"), Client(acl_broker, "factory-9/pi-42")]
    try:
        assert collector.subscribe("edgedl/v1/+/+/telemetry") == [1]
        assert collector.subscribe("edgedl/v1/+/+/status") == [1]
        for d in devices:
            assert d.publish(f"edgedl/v1/{d.user}/telemetry", b"t") == 0
            assert d.publish(f"edgedl/v1/{d.user}/status", b"s") == 0
        deadline = time.monotonic() + 10
        while len(collector.received) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(t for t, _ in collector.received) == [
            "edgedl/v1/factory-7/pi-42/status",
            "edgedl/v1/factory-7/pi-42/telemetry",
            "edgedl/v1/factory-9/pi-42/status",
            "edgedl/v1/factory-9/pi-42/telemetry",
        ]
    finally:
        collector.close()
        for d in devices:
            d.close()


def test_a_user_name_without_its_fleet_may_publish_nothing(acl_broker: MosquittoBroker) -> None:
    """A device id alone no longer names a device: it cannot write into any fleet."""
    legacy = Client(acl_broker, "pi-42")
    try:
        for fleet in ("factory-7", "factory-9"):
            assert legacy.publish(f"edgedl/v1/{fleet}/pi-42/telemetry", b"x") == NOT_AUTHORIZED
    finally:
        legacy.close()


def test_a_certificate_names_fleet_and_device(tmp_path: Path) -> None:
    """TLS with use_identity_as_username: the certificate's CN is ``<fleet>/<device>``."""
    tls = make_tls_files(tmp_path / "tls", client_name="factory-7/pi-42")
    broker = MosquittoBroker(tmp_path / "broker", tls=tls, extra=f"acl_file {ACL}")
    broker.start()
    device = Client(broker, "factory-7/pi-42", tls=True)
    try:
        assert (
            device.publish("edgedl/v1/factory-7/pi-42/telemetry", b"mine")
            == NO_MATCHING_SUBSCRIBERS
        )
        assert device.publish("edgedl/v1/factory-9/pi-42/telemetry", b"x") == NOT_AUTHORIZED
        assert device.publish("edgedl/v1/factory-7/pi-7/telemetry", b"x") == NOT_AUTHORIZED
    finally:
        device.close()
        broker.stop()
