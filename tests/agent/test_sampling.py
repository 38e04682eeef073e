"""The agent's sampler: the bounds of ``[sampling]`` hold under a burst ten times their size.

Real digits go through a :class:`Sampler` writing to a real SQLite spool; the classifier
outputs are synthetic scores whose top-1 confidence and class the test sets. The last test
sends samples through a real Mosquitto that goes away and comes back;
tests/e2e/test_sampling_e2e.py runs real agents and a real collector.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError
from tests import mqtt_broker
from tests.agent.serving_helpers import digit_images

from edgedl.agent.drift_state import DriftState
from edgedl.agent.telemetry.config import TelemetryConfig
from edgedl.agent.telemetry.sampling import Sampler, SamplerMetrics, SamplingConfig
from edgedl.agent.telemetry.service import TelemetryService
from edgedl.agent.telemetry.spool import Spool
from edgedl.drift_notice import DriftingVersion, DriftNotice, encode_notice
from edgedl.samples import SampleLabel, SampleMessage, decode_sample, samples_topic


def scores(classes: list[int], confidence: float, width: int = 10) -> NDArray[np.float32]:
    """Probabilities whose top-1 is ``classes[i]`` with probability ``confidence``."""
    rest = (1.0 - confidence) / (width - 1)
    out = np.full((len(classes), width), rest, dtype=np.float32)
    out[np.arange(len(classes)), classes] = confidence
    return out


def spooled(spool: Spool) -> list[SampleMessage | SampleLabel]:
    return [decode_sample(w.payload) for w in spool.pending(100_000)]


def sampler(tmp_path: Path, **config: Any) -> Sampler:
    cfg = SamplingConfig(**config)
    return Sampler(cfg, Spool(tmp_path / "samples.db", cfg.max_disk_bytes), "f", "d",
                   rng=random.Random(3))  # fmt: skip


def test_sampling_is_off_unless_configured() -> None:
    assert not SamplingConfig().enabled
    assert SamplingConfig(rate=0.1).enabled and SamplingConfig(low_confidence=0.5).enabled
    with pytest.raises(ValidationError):
        SamplingConfig(rate=1.5)


def test_a_burst_of_ten_times_the_hourly_bound_keeps_only_the_bound(tmp_path: Path) -> None:
    s = sampler(tmp_path, rate=1.0, max_per_hour=20, queue_size=1000)
    s.start()
    images = digit_images(200)
    for i in range(0, 200, 4):
        s.offer("digits", "1", f"req-{i}", {"x": images[i : i + 4]}, {"y": scores([1] * 4, 0.9)})
    s.stop()
    messages = spooled(s.spool)
    assert len(messages) == 20 and s.counts.skipped_hourly == 180
    first = messages[0]
    assert isinstance(first, SampleMessage)
    assert first.reason == "rate" and first.predicted == 1
    assert first.confidence == pytest.approx(0.9, abs=1e-6)
    np.testing.assert_array_equal(first.inputs["x"].array(), images[0])  # the real input
    assert len({m.id for m in messages}) == 20
    registry = CollectorRegistry()
    registry.register(SamplerMetrics(s))
    text = generate_latest(registry).decode()
    assert 'edgedl_samples_total{outcome="skipped_hourly"} 180.0' in text
    assert "edgedl_samples_spooled 20.0" in text


def test_quotas_per_class_and_low_confidence(tmp_path: Path) -> None:
    s = sampler(tmp_path, low_confidence=0.5, class_quota=3, max_per_hour=1000)
    s.start()
    images = digit_images(100)
    classes = [i % 5 for i in range(100)]
    for i in range(100):
        confident = i % 2 == 0  # the confident half is never chosen
        s.offer("digits", "1", None, {"x": images[i : i + 1]},
                {"y": scores([classes[i]], 0.95 if confident else 0.3)})  # fmt: skip
    s.stop()
    messages = [m for m in spooled(s.spool) if isinstance(m, SampleMessage)]
    per_class = Counter(m.predicted for m in messages)
    assert per_class == {c: 3 for c in range(5)}  # ten times the quota offered per class
    assert all(m.reason == "low_confidence" and (m.confidence or 1) < 0.5 for m in messages)
    assert s.counts.skipped_quota == 50 - 15


def test_the_disk_bound_holds_and_drops_are_counted_and_reported(tmp_path: Path) -> None:
    s = sampler(tmp_path, rate=1.0, max_per_hour=10_000, max_disk_bytes=20_000, queue_size=1000)
    s.start()
    images = digit_images(400)
    for i in range(400):
        s.offer("digits", "1", None, {"x": images[i : i + 1]}, {"y": scores([2], 0.9)})
    s.stop()
    assert s.spool.size_bytes <= 20_000
    kept = s.counts.written
    assert 0 < kept < 400 and s.counts.dropped_disk_full == 400 - kept
    # The broker acknowledges some: room again, and the next sample reports the drops.
    for w in s.spool.pending(5):
        s.spool.remove(w.seq)
    s.start()
    s.offer("digits", "1", None, {"x": images[:1]}, {"y": scores([2], 0.9)})
    s.stop()
    last = spooled(s.spool)[-1]
    assert isinstance(last, SampleMessage) and last.dropped == 400 - kept


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    s = sampler(tmp_path, rate=1.0, max_per_hour=10_000, queue_size=5)  # writer not started
    images = digit_images(50)
    for i in range(50):
        s.offer("digits", "1", None, {"x": images[i : i + 1]}, {"y": scores([0], 0.9)})
    assert s.counts.dropped_queue_full == 45 and s.counts.kept == 5
    s.start()
    s.stop()
    assert len(s.spool) == 5


def test_a_late_label_follows_its_sample(tmp_path: Path) -> None:
    s = sampler(tmp_path, rate=1.0)
    s.start()
    images = digit_images(2)
    s.offer("digits", "1", "abc", {"x": images}, {"y": scores([4, 5], 0.9)})
    s.on_label("abc", [7, 5])
    s.on_label("never-sampled", [1])
    s.stop()
    samples = [m for m in spooled(s.spool) if isinstance(m, SampleMessage)]
    labels = [m for m in spooled(s.spool) if isinstance(m, SampleLabel)]
    assert {(m.prediction_id, m.index) for m in samples} == {("abc", 0), ("abc", 1)}
    by_index = {m.index: m.id for m in samples}
    assert {(x.id, x.label) for x in labels} == {(by_index[0], 7), (by_index[1], 5)}


mosquitto_broker = mqtt_broker.mosquitto_broker  # the fixture, for pytest to find


def test_samples_kept_through_a_broker_outage_all_arrive(
    mosquitto_broker: mqtt_broker.MosquittoBroker, tmp_path: Path
) -> None:
    recorder = mqtt_broker.Recorder(mosquitto_broker.url, ["edgedl/v1/#"])
    config = TelemetryConfig(
        mqtt=mosquitto_broker.url, fleet="f", device="d", interval_s=0.3,
        spool_path=tmp_path / "spool.db", reconnect_min_s=0.1, reconnect_max_s=0.5, keepalive_s=5,
    )  # fmt: skip
    service = TelemetryService(config)
    s = service.sampler(SamplingConfig(rate=1.0, max_per_hour=1000))
    service.start()
    images = digit_images(30)

    def offer(i: int) -> None:
        s.offer("digits", "1", None, {"x": images[i : i + 1]}, {"y": scores([i % 10], 0.9)})

    def received() -> set[str]:
        topic = samples_topic("f", "d")
        return {decode_sample(m.payload).id for m in list(recorder.messages) if m.topic == topic}

    for i in range(10):
        offer(i)
    assert recorder.wait_for(lambda _: len(received()) == 10, 20)
    mosquitto_broker.stop()
    for i in range(10, 30):
        offer(i)
    assert s.drain(10) and len(s.spool) == 20  # on disk while the broker is away
    mosquitto_broker.start()
    assert recorder.wait_for(lambda _: len(s.spool) == 0, 30)
    service.stop()
    assert recorder.wait_for(lambda _: len(received()) == 30, 30)
    # Every input arrived, each as it was sent.
    sent = [decode_sample(m.payload) for m in list(recorder.messages)
            if m.topic == samples_topic("f", "d")]  # fmt: skip
    inputs = {m.id: m.inputs["x"].array().tobytes() for m in sent if isinstance(m, SampleMessage)}
    assert sorted(inputs.values()) == sorted(images[i].tobytes() for i in range(30))
    recorder.close()


def test_drift_rate_applies_only_while_a_fresh_notice_names_the_version(tmp_path: Path) -> None:
    now = [1000.0]
    drift = DriftState("d", clock=lambda: now[0])
    s = sampler(tmp_path, during_drift_rate=1.0, max_per_hour=1000)
    s.drift = drift
    s.start()
    images = digit_images(40)

    def offer(n: int, version: str = "1") -> None:
        for i in range(n):
            s.offer("digits", version, None, {"x": images[i : i + 1]}, {"y": scores([i % 10], 0.9)})

    def notice(device: str, *versions: str, ttl_s: float = 60.0) -> bytes:
        drifting = [DriftingVersion(model="digits", version=v, opened_at=1.0) for v in versions]
        return encode_notice(DriftNotice(fleet="f", device=device, time=now[0], ttl_s=ttl_s,
                                         drifting=drifting))  # fmt: skip

    offer(10)  # no notice: nothing
    drift.on_notice(notice("other-device", "1"))  # another device's: ignored
    drift.on_notice(b"{not a notice")  # malformed: ignored, the state stays
    offer(10)
    drift.on_notice(notice("d", "1"))
    offer(10)  # drifting: every inference of version 1, none of version 2
    offer(10, version="2")
    now[0] += 61  # no fresh notice for longer than its ttl: forgotten
    offer(10)
    drift.on_notice(notice("d", "1"))
    offer(5)
    drift.on_notice(notice("d"))  # the alert resolved
    offer(10)
    s.stop()
    messages = [m for m in spooled(s.spool) if isinstance(m, SampleMessage)]
    assert [m.reason for m in messages] == ["drift"] * 15
    assert {m.version for m in messages} == {"1"}
    assert SamplingConfig(during_drift_rate=0.5).enabled
