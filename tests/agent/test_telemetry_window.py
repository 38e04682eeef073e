"""The telemetry window: counts, histograms on the contract's edges, the profile, its size."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edgedl.agent.telemetry.system import pipeline_figures, temperature_c
from edgedl.agent.telemetry.window import ModelInfo, WindowBuilder
from edgedl.profile import Histogram, Profile
from edgedl.telemetry import (
    LATENCY_EDGES_MS,
    TelemetryWindow,
    decode_window,
    encode_window,
)

SHA = "ab" * 32


def _reference(rng: np.random.Generator) -> Profile:
    x = rng.normal(0.5, 0.1, size=(500, 8, 8, 1)).astype(np.float32)
    logits = rng.normal(size=(500, 10)).astype(np.float32)
    return Profile.from_reference({"pixels": x}, {"scores": logits})


def _batch(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[dict, dict]:  # type: ignore[type-arg]
    x = rng.normal(0.5 + shift, 0.1, size=(n, 8, 8, 1)).astype(np.float32)
    return {"pixels": x}, {"scores": rng.normal(size=(n, 10)).astype(np.float32)}


@pytest.fixture
def builder() -> WindowBuilder:
    rng = np.random.default_rng(0)
    b = WindowBuilder("factory-7", "pi-42")
    b.register(ModelInfo("digits", "1", SHA, _reference(rng), latency_threshold_ms=50.0))
    return b


def test_a_window_counts_what_the_models_did(builder: WindowBuilder) -> None:
    rng = np.random.default_rng(1)
    for size in (1, 4, 4, 16):
        builder.on_batch("digits", "1", size, 0.002, *_batch(rng, size))
    for latency in (0.003, 0.010, 0.120):  # the last one is over the 50 ms threshold
        builder.on_request("digits", "1", latency, True)
    builder.on_request("digits", "1", 0.001, False)
    builder.on_error("digits", "1", "bad_input")
    builder.on_rejected("digits", "1", "queue_full")

    window = builder.cut(seq=7, dropped=2, pending=3)

    assert (window.fleet, window.device, window.seq) == ("factory-7", "pi-42", 7)
    assert (window.spool.dropped, window.spool.pending) == (2, 3)
    [model] = window.models
    assert (model.name, model.version, model.sha256) == ("digits", "1", SHA)
    c = model.counts
    assert (c.requests, c.inferences, c.errors, c.rejected, c.latency_violations) == (
        4,
        25,
        1,
        1,
        1,
    )
    latency = model.latency_ms.to_histogram()
    assert latency.count == 3 and list(latency.edges) == list(LATENCY_EDGES_MS)
    assert latency.total == pytest.approx(133.0)
    batch = model.batch_size.to_histogram()
    assert batch.count == 4 and batch.total == 25
    # 1 -> [1, 2), 4 -> [4, 8) twice, 16 -> [16, 32): on the fixed power-of-two edges
    assert batch.counts[1] == 1 and batch.counts[3] == 2 and batch.counts[5] == 1
    assert model.profile is not None
    profile = model.profile.to_profile()
    assert profile.samples == 25
    assert profile.histograms["input/pixels/mean"].count == 25
    assert int(profile.class_counts["output/scores"].sum()) == 25


def test_the_profile_is_binned_on_the_reference_edges_like_profile_observe(
    builder: WindowBuilder,
) -> None:
    """Same numbers as Profile.observe on the same data: the collector compares like with like."""
    rng = np.random.default_rng(2)
    reference = builder.models()[0].reference
    assert reference is not None
    expected = reference.empty_like()
    for _ in range(5):
        inputs, outputs = _batch(rng, 8, shift=0.2)
        builder.on_batch("digits", "1", 8, 0.001, inputs, outputs)
        expected.observe(inputs, outputs)
    got = builder.cut().models[0].profile
    assert got is not None
    assert got.to_profile().to_dict() == expected.to_dict()


def test_cut_starts_a_fresh_window(builder: WindowBuilder) -> None:
    rng = np.random.default_rng(3)
    builder.on_batch("digits", "1", 2, 0.001, *_batch(rng, 2))
    first = builder.cut(seq=0)
    second = builder.cut(seq=1)
    assert first.inferences == 2
    assert second.inferences == 0 and second.models == []
    assert second.window_start >= first.window_end - 1e-3


def test_window_size_does_not_grow_with_inferences(builder: WindowBuilder) -> None:
    rng = np.random.default_rng(4)
    sizes = []
    for batches in (10, 1000):
        for _ in range(batches):
            builder.on_batch("digits", "1", 8, 0.001, *_batch(rng, 8))
            builder.on_request("digits", "1", float(rng.uniform(0.001, 0.05)), True)
        payload, _ = encode_window(builder.cut(), "zstd")
        sizes.append(len(payload))
    assert sizes[1] < sizes[0] * 1.5, sizes
    assert decode_window(payload).inferences == 8000


def test_observers_on_many_threads_lose_no_count(builder: WindowBuilder) -> None:
    """Serving threads call the observer concurrently while windows are cut."""
    rng = np.random.default_rng(5)
    inputs, outputs = _batch(rng, 2)
    windows: list[TelemetryWindow] = []
    done = threading.Event()

    def serve() -> None:
        for _ in range(300):
            builder.on_batch("digits", "1", 2, 0.001, inputs, outputs)
            builder.on_request("digits", "1", 0.002, True)

    def cutter() -> None:
        while not done.is_set():
            windows.append(builder.cut())
            done.wait(0.01)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    cut_thread = threading.Thread(target=cutter)
    cut_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    cut_thread.join()
    windows.append(builder.cut())
    assert sum(w.inferences for w in windows) == 4 * 300 * 2
    assert sum(m.counts.requests for w in windows for m in w.models) == 4 * 300


def test_a_model_without_reference_profile_still_counts() -> None:
    b = WindowBuilder("f", "d", resolve=lambda name, version: ModelInfo(name, version, SHA))
    b.on_batch("other", "3", 4, 0.001, {"x": np.zeros((4, 3))}, {"y": np.zeros((4, 2))})
    [model] = b.cut().models
    assert model.profile is None and model.counts.inferences == 4 and model.sha256 == SHA


def test_sampling_is_off_by_default_and_never_carries_tensors(builder: WindowBuilder) -> None:
    rng = np.random.default_rng(6)
    builder.on_batch("digits", "1", 32, 0.001, *_batch(rng, 32))
    assert builder.cut().samples is None

    sampled = WindowBuilder("f", "d", sample_rate=1.0, max_samples=5)
    sampled.on_batch("digits", "1", 32, 0.001, *_batch(rng, 32))
    samples = sampled.cut().samples
    assert samples is not None and len(samples) == 5
    for record in samples:
        assert record["model"] == "digits"
        assert 0 <= record["output/scores/class"] < 10
        assert all(not isinstance(v, (list, dict)) for v in record.values())  # no raw tensors


def test_a_full_window_asks_to_be_cut() -> None:
    calls = []
    b = WindowBuilder("f", "d", max_inferences=10, on_full=lambda: calls.append(1))
    x = {"x": np.zeros((4, 2))}
    b.on_batch("m", "1", 4, 0.001, x, x)
    b.on_batch("m", "1", 4, 0.001, x, x)
    assert calls == []
    b.on_batch("m", "1", 4, 0.001, x, x)
    assert calls == [1]


def test_pipeline_figures_fit_the_contract() -> None:
    stats = {
        "keyword": {
            "vad": {
                "received": 100,
                "passed": 40,
                "unit_in": "frames",
                "latency_ms": {"count": 100, "mean": 0.2, "buckets": {"0.1": 3, "+Inf": 1}},
            },
            "ratio": float("nan"),
        }
    }
    window = WindowBuilder("f", "d", pipelines=lambda: stats).cut()
    vad = window.pipelines["keyword"]["vad"]
    assert vad["received"] == 100 and vad["passed"] == 40
    assert "unit_in" not in vad and "ratio" not in window.pipelines["keyword"]
    assert vad["latency_ms"]["count"] == 100
    assert vad["latency_ms"]["buckets.0.1"] == 3
    huge = {"p": {f"s{i}": {f"f{j}": j for j in range(100)} for i in range(100)}}
    TelemetryWindow.model_validate(
        {"fleet": "f", "device": "d", "seq": 0, "window_start": 0, "window_end": 0,
         "pipelines": pipeline_figures(huge)}
    )  # fmt: skip


def test_system_figures_and_temperature(tmp_path: Path) -> None:
    window = WindowBuilder("f", "d").cut()
    assert window.system.memory_rss_bytes > 10_000_000
    assert 0 < window.system.memory_percent <= 100
    zone = tmp_path / "thermal_zone0"
    zone.mkdir()
    (zone / "temp").write_text("48250\n")
    (tmp_path / "thermal_zone1").mkdir()
    (tmp_path / "thermal_zone1" / "temp").write_text("garbage")
    assert temperature_c(tmp_path) == pytest.approx(48.25)
    assert temperature_c(tmp_path / "missing") is None


def test_latency_bins_match_the_sdk_histogram() -> None:
    b = WindowBuilder("f", "d")
    values_ms = [0.05, 0.1, 0.3, 1.0, 7.5, 10_000.0, 20_000.0]
    for v in values_ms:
        b.on_request("m", "1", v / 1000.0, True)
    got = b.cut().models[0].latency_ms.to_histogram()
    expected = Histogram.empty(np.asarray(LATENCY_EDGES_MS))
    expected.add(np.asarray(values_ms))
    assert list(got.counts) == list(expected.counts)


def test_statistics_can_be_folded_off_the_serving_thread(builder: WindowBuilder) -> None:
    """Serving threads only buffer; whoever gets on_pending folds; the cut folds the rest."""
    rng = np.random.default_rng(7)
    asked: list[int] = []
    reference = builder.models()[0]
    b = WindowBuilder("f", "d", on_pending=lambda: asked.append(1))
    b.register(reference)
    for _ in range(20):
        b.on_batch("digits", "1", 4, 0.001, *_batch(rng, 4))  # 80 samples: over 64 once
    assert asked
    b.fold_pending()
    for _ in range(3):
        b.on_batch("digits", "1", 4, 0.001, *_batch(rng, 4))
    profile = b.cut().models[0].profile
    assert profile is not None and profile.samples == 92


def test_a_tabular_input_carries_its_pca_error_binned_as_profile_observe_does() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 3))
    x[:, 1] += x[:, 0]
    reference = Profile.from_reference({"t": x}, {})
    b = WindowBuilder("factory-7", "pi-42")
    b.register(ModelInfo("tab", "1", SHA, reference, latency_threshold_ms=50.0))
    expected = reference.empty_like()
    batch = {"t": rng.standard_normal((40, 3))}
    b.on_batch("tab", "1", 40, 0.001, batch, {})
    expected.observe(batch, {})
    got = b.cut().models[0].profile
    assert got is not None
    assert got.histograms["input/t/pca_error"].count == 40
    assert got.to_profile().to_dict() == expected.to_dict(projections=False)
