"""The Mosquitto ACL that docs/security.md ships: each device writes only its own topics.

A real Mosquitto with a password file and ``collector/edgedl/collector/mosquitto.acl``:
device ``pi-42`` may publish its own telemetry, which the collector (on a shared
subscription, as it runs by default) receives; its telemetry under another device's id is
refused and never delivered; the collector cannot pose as a device; a device cannot read
another device's desired state.
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

from tests.mqtt_broker import MosquittoBroker

ACL = Path(__file__).resolve().parents[1] / "collector/edgedl/collector/mosquitto.acl"
USERS = {"pi-42": "pw-42", "pi-7": "pw-7", "edgedl-collector": "pw-collector"}
NOT_AUTHORIZED = 135
NO_MATCHING_SUBSCRIBERS = 16  # accepted; nobody listens to it


class Client:
    """A connected MQTT 5 client that records what it receives and each PUBACK's reason."""

    def __init__(self, broker: MosquittoBroker, user: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.granted: list[int] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"acl-test-{user}", protocol=mqtt.MQTTv5
        )
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
    device = Client(acl_broker, "pi-42")
    try:
        assert collector.subscribe("$share/edgedl-collectors/edgedl/v1/+/+/telemetry") == [1]
        assert device.publish("edgedl/v1/factory-7/pi-42/telemetry", b"mine") == 0
        assert device.publish("edgedl/v1/factory-7/pi-7/telemetry", b"forged") == NOT_AUTHORIZED
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
    device = Client(acl_broker, "pi-42")
    try:
        # Mosquitto grants the subscription and checks read access per message it delivers.
        device.subscribe("edgedl/v1/factory-7/+/desired")
        device.subscribe("edgedl/v1/+/+/telemetry")
        assert collector.publish("edgedl/v1/factory-7/pi-7/desired", b"theirs") == 0
        assert collector.publish("edgedl/v1/factory-7/pi-42/desired", b"mine") == 0
        other = Client(acl_broker, "pi-7")
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
