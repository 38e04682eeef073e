"""Helpers for the collector tests: real windows, a real MQTT publisher, polling."""

from __future__ import annotations

import json
import socket
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgedl.bundle import Manifest
from edgedl.collector.config import CollectorConfig, load_config
from edgedl.telemetry import (
    TelemetryWindow,
    batch_size_histogram,
    encode_window,
    latency_histogram,
    telemetry_topic,
)

SHA = "5e" * 32
N_CLASSES = 10


def port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


Batch = tuple[dict[str, Any], dict[str, Any]]


def sample_batch(rng: np.random.Generator, n: int, shift: float = 0.0) -> Batch:
    """Image-like inputs (optionally brightened by ``shift``) and softmax outputs."""
    images = np.clip(rng.random((n, 8, 8, 1)) * 0.8 + shift, 0.0, 1.5)
    logits = rng.normal(0.0, 2.0, (n, N_CLASSES))
    if shift:
        logits[:, 0] += 4.0 * shift  # the shifted data is also mostly predicted as class 0
    return {"image": images}, {"probs": _softmax(logits)}


class WindowMaker:
    """Builds real telemetry windows: live data binned on the reference's edges."""

    def __init__(
        self,
        manifest: Manifest,
        fleet: str,
        sample: Callable[[np.random.Generator, int, float], Batch] | None = None,
    ) -> None:
        profile = manifest.reference_profile()
        assert profile is not None
        self.reference = profile
        self.manifest = manifest
        self.fleet = fleet
        self.sample = sample or sample_batch

    def window(
        self,
        device: str,
        seq: int,
        n: int = 50,
        shift: float = 0.0,
        latency_ms: float = 2.0,
        errors: int = 0,
        span_s: float = 60.0,
        seed: int | None = None,
        health: dict[str, float] | None = None,
    ) -> TelemetryWindow:
        # Seeded by device and seq (not hash(), which changes with every interpreter).
        rng = np.random.default_rng(
            seed if seed is not None else zlib.crc32(f"{device}/{seq}".encode())
        )
        live = self.reference.empty_like()
        live.observe(*self.sample(rng, n, shift))
        lat = latency_histogram()
        lat.add(rng.gamma(4.0, latency_ms / 4.0, n))
        batch = batch_size_histogram()
        batch.add(np.ones(n))
        end = time.time()
        kws: dict[str, Any] = {
            "vad": {
                "received": n,
                "passed": n // 2,
                "latency_ms": {"count": n, "sum": 1.0, "max": 0.1},
            }
        }
        if health is not None:
            kws["_health"] = health  # stage-health counters of the window (edgedl.stage_health)
        return TelemetryWindow(
            fleet=self.fleet,
            device=device,
            seq=seq,
            window_start=end - span_s,
            window_end=end,
            agent_version="test",
            models=[
                {
                    "name": self.manifest.name,
                    "version": self.manifest.version,
                    "sha256": self.manifest.sha256,
                    "counts": {"requests": n, "inferences": n, "errors": errors},
                    "latency_ms": lat.to_dict(),
                    "batch_size": batch.to_dict(),
                    "profile": live.to_dict(projections=False),
                }
            ],
            system={"cpu_percent": 5.0, "memory_rss_bytes": 50_000_000, "memory_percent": 1.0},
            pipelines={"kws": kws},
        )

    def payload(self, *args: Any, **kwargs: Any) -> tuple[str, bytes]:
        w = self.window(*args, **kwargs)
        return telemetry_topic(w.fleet, w.device), encode_window(w)[0]


class Publisher:
    """A real MQTT 5 client publishing with QoS 1 and waiting for each PUBACK."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def publish_many(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def collector_config(
    broker: Broker, db: str, fleet: str | None = None, **overrides: Any
) -> CollectorConfig:
    """A config for a collector of its own: unique group and client id, any free HTTP port."""
    base: dict[str, Any] = {
        "mqtt.url": broker.url,
        "mqtt.group": f"g{uuid.uuid4().hex[:8]}",
        "mqtt.client_id": f"collector-{uuid.uuid4().hex[:8]}",
        "mqtt.session_expiry_s": 120,
        "storage.url": db,
        "http.port": 0,
        "drift.evaluate_interval_s": 0.2,
    }
    if fleet is not None:
        # Only the test's own fleet: retained statuses other tests left on a shared broker
        # stay out of this test's database.
        base["mqtt.fleets"] = [fleet]
    base.update(overrides)
    return load_config(None, env={}, overrides=base)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def get_json(url: str) -> Any:
    import httpx

    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.json()


def to_json(obj: Any) -> str:
    return json.dumps(obj, default=str)


def metric(collector: Any, name: str) -> float:
    """The value of one of the collector's metrics, read from its /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(get_json_text(f"{collector.url}/metrics")):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


def get_json_text(url: str) -> str:
    import httpx

    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.text


def get_every_page(collector: Any, devices: list[str]) -> dict[str, int]:
    """The status of every GET page of the API and the dashboard, by path."""
    import httpx

    paths = [
        "/",
        "/static/app.js",
        "/api/v1/devices",
        "/api/v1/windows",
        "/api/v1/windows?limit=5000",
        "/api/v1/drift",
        "/api/v1/drift?scope=fleet&history=1",
        "/api/v1/alerts",
        "/api/v1/dead-letters",
        "/api/v1/references",
        "/api/v1/stage-health",
        "/api/v1/pipeline-references",
        "/api/v1/artifacts",
        "/api/v1/fleet/models",
        "/api/v1/rollouts",
        "/openapi.json",
        "/metrics",
        "/healthz",
        "/api/v1/series",
        "/api/v1/series?metric=throughput&points=1",
        "/api/v1/alerts?state=resolved&fleet=x",
    ]
    for d in devices:
        paths += [
            f"/api/v1/devices/{d}",
            f"/api/v1/windows?device={d}",
            f"/api/v1/drift?device={d}",
            *(f"/api/v1/series?device={d}&metric={m}" for m in ("latency", "throughput", "errors")),
        ]
    with httpx.Client(base_url=collector.url, timeout=10) as client:
        return {p: client.get(p).status_code for p in paths}


def raw_window(window: TelemetryWindow, **changes: Any) -> tuple[str, bytes]:
    """Topic and plain-JSON payload of ``window`` with fields replaced (no validation)."""
    body = window.model_dump(exclude_none=True)
    body.update(changes)
    return telemetry_topic(window.fleet, window.device), json.dumps(body).encode()
