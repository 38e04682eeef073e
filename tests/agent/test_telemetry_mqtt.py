"""Telemetry through a real Mosquitto: order, counts, outages, the spool bound, TLS, credentials.

The agent side runs in process here (a :class:`TelemetryService` fed through its observer);
tests/agent/test_telemetry_agent.py runs the real ``edgedl agent serve`` and kills it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests import mqtt_broker
from tests.mqtt_broker import (
    PASSWORD,
    PASSWORD_USER,
    MosquittoBroker,
    MQTT311Only,
    Recorder,
    TlsFiles,
)

from edgedl.agent.telemetry.config import TelemetryConfig
from edgedl.agent.telemetry.service import TelemetryService
from edgedl.agent.telemetry.spool import Spool
from edgedl.agent.telemetry.window import ModelInfo
from edgedl.telemetry import CONTENT_TYPES, TelemetryWindow, decode_status, decode_window

# The broker fixtures this module uses (pytest finds fixtures by module attribute).
mosquitto_broker = mqtt_broker.mosquitto_broker
password_broker = mqtt_broker.password_broker
tls_broker = mqtt_broker.tls_broker
tls_files = mqtt_broker.tls_files

SHA = "cd" * 32
TOPICS = ["edgedl/v1/#"]


def make_config(url: str, tmp_path: Path, **overrides: Any) -> TelemetryConfig:
    settings: dict[str, Any] = {
        "mqtt": url,
        "fleet": "factory-7",
        "device": "pi-42",
        "interval_s": 0.3,
        "spool_path": tmp_path / "spool.db",
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "keepalive_s": 5,
    }
    settings.update(overrides)
    return TelemetryConfig(**settings)


def serve(service: TelemetryService, batches: int, size: int = 4) -> int:
    """Feed the observer like the serving path does; the number of inferences."""
    x = {"x": np.ones((size, 3), dtype=np.float32)}
    y = {"y": np.eye(size, 2, dtype=np.float32)}
    for _ in range(batches):
        service.observer.on_batch("digits", "1", size, 0.001, x, y)
        service.observer.on_request("digits", "1", 0.002, True)
    return batches * size


def windows(recorder: Recorder) -> list[TelemetryWindow]:
    return [decode_window(m.payload) for m in recorder.on("/telemetry")]


def seqs(recorder: Recorder) -> list[int]:
    return [w.seq for w in windows(recorder)]


def wait_all(recorder: Recorder, spool_path: Path, timeout: float = 20) -> None:
    """Wait until the recorder has the last window the (stopped) service spooled."""
    last = Spool(spool_path).next_seq - 1
    assert recorder.wait_for(lambda m: last in seqs(recorder), timeout)


def offline_last(recorder: Recorder) -> bool:
    statuses = recorder.on("/status")
    return bool(statuses) and not decode_status(statuses[-1].payload).online


@pytest.fixture
def recorder(mosquitto_broker: MosquittoBroker) -> Iterator[Recorder]:
    rec = Recorder(mosquitto_broker.url, TOPICS)
    yield rec
    rec.close()


def started(config: TelemetryConfig) -> TelemetryService:
    service = TelemetryService(config)
    service.builder.register(ModelInfo("digits", "1", SHA))
    service.start()
    return service


def test_windows_arrive_in_order_with_the_right_counts(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    service = started(make_config(mosquitto_broker.url, tmp_path))
    assert service.publisher.wait_connected(10)
    sent = 0
    for _ in range(5):
        sent += serve(service, batches=10)
        time.sleep(0.2)
    service.stop()
    wait_all(recorder, tmp_path / "spool.db")
    assert recorder.wait_for(lambda m: offline_last(recorder), 10)

    got = windows(recorder)
    assert [w.seq for w in got] == list(range(len(got))) and len(got) >= 2
    assert sum(w.inferences for w in got) == sent == 200
    assert all((w.fleet, w.device) == ("factory-7", "pi-42") for w in got)
    assert {m.content_type for m in recorder.on("/telemetry")} == {CONTENT_TYPES["zstd"]}
    assert len(Spool(tmp_path / "spool.db")) == 0  # every window acknowledged: none left

    statuses = [decode_status(m.payload) for m in recorder.on("/status")]
    assert statuses[0].online and not statuses[-1].online  # online at connect, offline at stop
    assert [(r.name, r.version, r.sha256) for r in statuses[0].models] == [("digits", "1", SHA)]
    late = Recorder(mosquitto_broker.url, ["edgedl/v1/+/+/status"])  # retained for newcomers
    assert late.wait_for(lambda msgs: len(msgs) == 1, 10)
    assert late.messages[0].retain and not decode_status(late.messages[0].payload).online
    late.close()


def test_gzip_is_declared_in_the_message(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    service = started(make_config(mosquitto_broker.url, tmp_path, compression="gzip"))
    serve(service, 3)
    service.stop()
    wait_all(recorder, tmp_path / "spool.db")
    messages = recorder.on("/telemetry")
    assert messages and {m.content_type for m in messages} == {CONTENT_TYPES["gzip"]}
    assert sum(decode_window(m.payload).inferences for m in messages) == 12


@pytest.mark.slow
def test_a_broker_outage_loses_no_window(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    service = started(make_config(mosquitto_broker.url, tmp_path))
    sent = serve(service, 5)
    assert recorder.wait_for(lambda m: len(m) >= 3, 10)

    mosquitto_broker.stop()
    for _ in range(6):
        sent += serve(service, 5)
        time.sleep(0.3)
    waiting = len(service.spool)
    assert waiting >= 3 and not service.publisher.connected  # held on disk while down
    mosquitto_broker.start()

    assert recorder.wait_for(lambda m: len(service.spool) == 0, 30)
    service.stop()
    last = Spool(tmp_path / "spool.db").next_seq - 1
    # The recorder reconnects on its own schedule; the broker kept its messages meanwhile.
    assert recorder.wait_for(lambda m: last in seqs(recorder), 30)
    got = seqs(recorder)
    assert sorted(set(got)) == list(range(last + 1))  # every window, no gap
    assert sum(w.inferences for w in {w.seq: w for w in windows(recorder)}.values()) == sent


@pytest.mark.slow
def test_past_the_spool_bound_the_oldest_are_dropped_and_reported(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    mosquitto_broker.stop()
    config = make_config(mosquitto_broker.url, tmp_path, spool_max_windows=3, interval_s=600)
    service = started(config)
    for _ in range(8):
        serve(service, 1)
        service.flush()
    assert len(service.spool) == 3 and service.spool.dropped_total == 5
    mosquitto_broker.start()
    assert service.publisher.wait_connected(20)
    assert recorder.wait_for(lambda m: len(service.spool) == 0, 20)
    service.flush()  # the next window carries the count
    assert recorder.wait_for(lambda m: len(service.spool) == 0, 20)
    service.stop()
    last = Spool(tmp_path / "spool.db").next_seq - 1
    assert recorder.wait_for(lambda m: last in seqs(recorder), 30)

    got = {w.seq: w for w in windows(recorder)}
    assert sorted(got) == [5, 6, 7, 8, 9]  # seqs 0-4 were dropped: the oldest
    reported = sum(w.spool.dropped for w in got.values())
    missing = set(range(max(got) + 1)) - set(got)
    assert reported == len(missing) == 5


def test_tls_with_a_client_certificate(
    tls_broker: MosquittoBroker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    recorder = Recorder(tls_broker.url, TOPICS, tls=tls_files)
    config = make_config(
        tls_broker.url,
        tmp_path,
        ca_file=tls_files.ca,
        cert_file=tls_files.client_cert,
        key_file=tls_files.client_key,
    )
    service = started(config)
    assert service.publisher.wait_connected(10)
    serve(service, 2)
    service.stop()
    wait_all(recorder, tmp_path / "spool.db")
    recorder.close()
    assert sum(w.inferences for w in windows(recorder)) == 8
    assert tls_broker.url.startswith("mqtts://")


def test_tls_refuses_a_client_without_certificate_or_with_the_wrong_ca(
    tls_broker: MosquittoBroker, tls_files: TlsFiles, tmp_path: Path
) -> None:
    no_cert = TelemetryService(make_config(tls_broker.url, tmp_path / "a", ca_file=tls_files.ca))
    wrong_ca = TelemetryService(
        make_config(
            tls_broker.url,
            tmp_path / "b",
            ca_file=tls_files.other_ca,
            cert_file=tls_files.client_cert,
            key_file=tls_files.client_key,
        )
    )
    for service in (no_cert, wrong_ca):
        service.start()
    for service in (no_cert, wrong_ca):
        assert not service.publisher.wait_connected(2)
        service.stop(flush_timeout_s=0.5)
    assert no_cert.publisher.last_error is not None
    assert "certificate" in (wrong_ca.publisher.last_error or "").lower()


def test_a_broker_without_anonymous_access_refuses_a_client_without_credentials(
    password_broker: MosquittoBroker, tmp_path: Path
) -> None:
    anonymous = TelemetryService(make_config(password_broker.url, tmp_path / "anon"))
    anonymous.start()
    assert not anonymous.publisher.wait_connected(2)
    anonymous.stop(flush_timeout_s=0.5)
    assert "not authorized" in (anonymous.publisher.last_error or "").lower()
    waiting = len(Spool(tmp_path / "anon" / "spool.db"))
    assert waiting >= 1  # its windows wait on disk, not lost

    recorder = Recorder(password_broker.url, TOPICS, username=PASSWORD_USER, password=PASSWORD)
    config = make_config(
        password_broker.url, tmp_path / "anon", username=PASSWORD_USER, password=PASSWORD
    )
    service = started(config)  # the same spool: the refused window goes out now
    assert service.publisher.wait_connected(10)
    service.stop()
    wait_all(recorder, tmp_path / "anon" / "spool.db")
    recorder.close()
    assert seqs(recorder)[: waiting + 1] == list(range(waiting + 1))
    assert PASSWORD not in repr(config) and PASSWORD not in config.redacted_url()


def test_status_payload_is_plain_json(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    service = started(make_config(mosquitto_broker.url, tmp_path))
    assert recorder.wait_for(lambda m: any(x.topic.endswith("/status") for x in m), 10)
    service.stop()
    status = json.loads(recorder.on("/status")[0].payload)
    assert status["online"] is True and status["device"] == "pi-42"


def test_a_broker_that_refuses_mqtt_5_gets_mqtt_3_1_1(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    old = MQTT311Only(mosquitto_broker.port)
    service = started(make_config(old.url, tmp_path))
    assert service.publisher.wait_connected(10)
    assert service.publisher.protocol == "3.1.1" and old.refused_v5 == 1
    sent = serve(service, 5)
    service.stop()
    old.close()
    assert recorder.wait_for(lambda m: sum(w.inferences for w in windows(recorder)) == sent, 10)
    assert recorder.wait_for(lambda m: offline_last(recorder), 10)
    # No MQTT 5 properties on 3.1.1: the payload's first bytes say it is zstd.
    assert {m.content_type for m in recorder.on("/telemetry")} == {None}
    assert [decode_status(m.payload).online for m in recorder.on("/status")] == [True, False]


def test_pipeline_detections_go_to_events(
    mosquitto_broker: MosquittoBroker, recorder: Recorder, tmp_path: Path
) -> None:
    from edgedl.agent.pipeline.stream import Event

    service = started(make_config(mosquitto_broker.url, tmp_path))
    service.on_events("keyword", [Event("yes", 0.5, 1.25, 0.93)])
    assert recorder.wait_for(lambda m: bool(recorder.on("/events")), 10)
    service.stop()
    message = json.loads(recorder.on("/events")[0].payload)
    assert message["pipeline"] == "keyword" and message["device"] == "pi-42"
    assert message["events"] == [
        {"kind": "detection", "label": "yes", "start": 0.5, "end": 1.25, "score": 0.93}
    ]


@pytest.mark.slow
def test_windows_the_broker_refuses_stay_spooled_until_it_takes_them(
    tmp_path: Path,
) -> None:
    """An ACL that forbids the telemetry topic: PUBACK 'not authorized', nothing is lost."""
    acl = tmp_path / "acl"
    acl.write_text("topic read edgedl/v1/#\ntopic write edgedl/v1/+/+/status\n")
    broker = MosquittoBroker(tmp_path / "acl-broker", extra=f"acl_file {acl}")
    broker.start()
    try:
        recorder = Recorder(broker.url, TOPICS)
        config = make_config(broker.url, tmp_path, interval_s=600, reconnect_max_s=0.5)
        service = started(config)
        assert service.publisher.wait_connected(10)
        serve(service, 3)
        service.flush()
        time.sleep(1.5)
        assert len(service.spool) == 1 and seqs(recorder) == []  # refused, not dropped

        acl.write_text("topic readwrite edgedl/v1/#\n")
        broker.stop()
        broker.start()
        assert recorder.wait_for(lambda m: seqs(recorder) == [0], 20)
        service.stop()
        recorder.close()
        assert windows(recorder)[0].inferences == 12
    finally:
        broker.stop()
