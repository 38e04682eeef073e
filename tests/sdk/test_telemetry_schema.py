"""The telemetry contract: topics, the window payload, encodings and what is refused."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zstandard
from pydantic import ValidationError

from edgedl import telemetry as t
from edgedl.errors import TelemetryError
from edgedl.profile import Profile

DOCS = Path(__file__).resolve().parents[2] / "docs" / "telemetry.md"


def _doc_examples() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    return [json.loads(b) for b in blocks]


def _window(seq: int = 1, **overrides: Any) -> t.TelemetryWindow:
    ref_rng = np.random.default_rng(0)
    reference = Profile.from_reference(
        {"image": ref_rng.random((300, 8, 8, 1))}, {"probs": ref_rng.dirichlet(np.ones(10), 300)}
    )
    rng = np.random.default_rng(seq)
    images = rng.random((50, 8, 8, 1))
    probs = rng.dirichlet(np.ones(10), 50)
    live = reference.empty_like()
    live.observe({"image": images[:50]}, {"probs": probs[:50]})
    latency = t.latency_histogram()
    latency.add(rng.gamma(2.0, 2.0, 50))
    batch = t.batch_size_histogram()
    batch.add([1] * 30 + [4] * 5)
    fields: dict[str, Any] = {
        "fleet": "factory-1",
        "device": "cam-07",
        "seq": seq,
        "window_start": 100.0,
        "window_end": 110.0,
        "agent_version": "0.1.0",
        "models": [
            {
                "name": "digits",
                "version": "2",
                "sha256": "ab" * 32,
                "counts": {"requests": 35, "inferences": 50},
                "latency_ms": latency.to_dict(),
                "batch_size": batch.to_dict(),
                "profile": live.to_dict(),
            }
        ],
        "system": {"cpu_percent": 3.5, "memory_rss_bytes": 1 << 26, "memory_percent": 1.5},
        "pipelines": {"kws": {"vad": {"received": 10, "passed": 2, "latency_ms": {"max": 0.4}}}},
    }
    fields.update(overrides)
    return t.TelemetryWindow.model_validate(fields)


def test_docs_example_window_and_status_are_valid() -> None:
    window, status = _doc_examples()
    w = t.TelemetryWindow.model_validate(window)
    assert w.device == "cam-07" and w.inferences == 8
    assert w.models[0].profile is not None
    profile = w.models[0].profile.to_profile()
    assert int(profile.class_counts["output/probs"].sum()) == 8
    s = t.DeviceStatus.model_validate(status)
    assert s.online and s.models[0].version == "2"
    payload, _ = t.encode_window(w)
    assert t.decode_window(payload) == w


@pytest.mark.parametrize(
    ("compression", "content_type", "magic"),
    [
        ("zstd", "application/json+zstd", b"\x28\xb5\x2f\xfd"),
        ("gzip", "application/json+gzip", b"\x1f\x8b"),
        ("none", "application/json", b"{"),
    ],
)
def test_every_encoding_round_trips_and_is_detected_from_its_bytes(
    compression: t.Compression, content_type: str, magic: bytes
) -> None:
    window = _window()
    payload, ctype = t.encode_window(window, compression)
    assert ctype == content_type
    assert payload.startswith(magic)
    assert t.decode_window(payload) == window


def test_a_window_stays_small_whatever_the_inference_count() -> None:
    payload, _ = t.encode_window(_window())
    assert len(payload) < 2048


def test_histograms_from_many_devices_sum_into_a_fleet_histogram() -> None:
    windows = [_window(seq) for seq in range(1, 4)]
    fleet = t.latency_histogram()
    for w in windows:
        fleet = fleet.merge(w.models[0].latency_ms.to_histogram())
    assert fleet.count == 150
    profiles = [w.models[0].profile.to_profile() for w in windows if w.models[0].profile]
    assert profiles[0].merge(profiles[1]).samples == 100


def test_topics_are_built_in_one_place() -> None:
    assert t.telemetry_topic("f1", "d.1") == "edgedl/v1/f1/d.1/telemetry"
    assert t.status_topic("f1", "d_1") == "edgedl/v1/f1/d_1/status"
    assert t.events_topic("f1", "d-1") == "edgedl/v1/f1/d-1/events"
    assert t.alerts_topic("f1") == "edgedl/v1/f1/alerts"
    assert t.shared_telemetry_subscription("cg") == "$share/cg/edgedl/v1/+/+/telemetry"
    assert t.parse_topic("edgedl/v1/f1/d-1/telemetry") == ("f1", "d-1", "telemetry")


@pytest.mark.parametrize("bad", ["a/b", "a+", "#", "", "x" * 129, "sp ace"])
def test_ids_that_would_change_a_topic_are_refused(bad: str) -> None:
    with pytest.raises(TelemetryError, match="invalid device"):
        t.telemetry_topic("fleet", bad)
    with pytest.raises(ValidationError, match="invalid"):
        _window(device=bad)


def _json_with(**changes: Any) -> bytes:
    data = json.loads(_window().model_dump_json())
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_json_with(schema_version=3), "unsupported schema_version 3"),
        (_json_with(seq=-1), "seq"),
        (_json_with(seq="seven"), "seq"),
        (_json_with(window_end=1.0), "window_end is before window_start"),
        (_json_with(models__0__sha256="nothex"), "sha256"),
        (_json_with(models__0__latency_ms__edges=[1.0, 2.0]), "latency"),
        (_json_with(models__0__latency_ms__counts=[1, 2]), "counts"),
        (_json_with(pipelines={"p": {"s": {"x": "text"}}}), "must be a number"),
        (_json_with(surprise=1), "surprise"),
        (_json_with(models=[{}] * 17), "models"),
        (_json_with(window_start=1.0).replace(b"1.0", b"NaN", 1), "finite number"),
        (b"[1, 2, 3]", "payload"),
        (b"{not json", "not valid JSON"),
        (b"\x00\x01binary", "unknown payload encoding"),
        (b"\x28\xb5\x2f\xfdgarbage", "corrupt zstd"),
        (b"\x1f\x8bgarbage", "corrupt gzip"),
    ],
)
def test_malformed_windows_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(TelemetryError, match=re.escape(reason)):
        t.decode_window(payload)


def test_nan_in_a_histogram_is_refused() -> None:
    raw = _json_with(models__0__latency_ms__sum=12345.5).replace(b"12345.5", b"Infinity")
    with pytest.raises(TelemetryError, match="finite"):
        t.decode_window(raw)


def test_decompression_bombs_and_oversized_payloads_are_refused() -> None:
    bomb = b"{" + b" " * (64 * 1024 * 1024)
    zstd_bomb = zstandard.ZstdCompressor().compress(bomb)
    assert len(zstd_bomb) < t.MAX_PAYLOAD_BYTES
    with pytest.raises(TelemetryError, match="decompresses to more than"):
        t.decode_window(zstd_bomb)
    with pytest.raises(TelemetryError, match="decompresses to more than"):
        t.decode_window(gzip.compress(bomb))
    with pytest.raises(TelemetryError, match="over the limit"):
        t.decode_window(b"{" + b" " * t.MAX_PAYLOAD_BYTES + b"}")


def test_deeply_nested_json_is_refused_not_crashing() -> None:
    with pytest.raises(TelemetryError):
        t.decode_window(b'{"pipelines":' + b"[" * 100_000 + b"]" * 100_000 + b"}")


def test_status_round_trips() -> None:
    status = t.DeviceStatus(
        fleet="f", device="d", online=False, since=5.0, models=[], agent_version="0.1"
    )
    assert t.decode_status(t.encode_status(status)) == status
