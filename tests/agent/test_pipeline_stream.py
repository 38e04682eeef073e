"""Pipelines as streaming objects: chunking never changes events; stages do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.agent.pipeline_fixtures import (
    RATE,
    Recording,
    loudness_bundle,
    pipeline_toml,
    speak,
    words_with_gaps,
)

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.audio import float_to_pcm16, pcm16_to_float
from edgedl.agent.pipeline.features import log_mel
from edgedl.agent.pipeline.pipeline import Pipeline, build_pipeline
from edgedl.agent.pipeline.postprocess import PostprocessStage
from edgedl.agent.pipeline.stream import Audio, Window
from edgedl.agent.pipeline.window import WindowStage


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    tmp = tmp_path_factory.mktemp("espeak")
    spoken = [
        speak(w, tmp, voice=v)
        for w, v in [("yes", "en-us"), ("stop", "en-gb-x-rp"), ("seven", "en"),
                     ("window", "en-us+f3"), ("happy", "en-029"), ("go", "en-us")]
    ]  # fmt: skip
    return words_with_gaps(spoken)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loudness_bundle(tmp_path_factory.mktemp("loudness") / "bundle")


def make_pipeline(bundle: Path, tmp_path: Path, engine: str) -> Pipeline:
    config = tmp_path / f"{engine}.toml"
    config.write_text(pipeline_toml(bundle, engine))
    return build_pipeline(load_config(config).pipelines[0])


def random_chunks(data: bytes, rng: np.random.Generator) -> list[bytes]:
    """``data`` cut at random places, odd byte counts included."""
    cuts, pos = [], 0
    while pos < len(data):
        step = int(rng.integers(1, 9000))
        cuts.append(data[pos : pos + step])
        pos += step
    return cuts


def as_tuples(events: list) -> list[tuple[str, float, float]]:
    return [(e.label, e.start, e.end) for e in events]


@pytest.mark.parametrize("engine", ["energy", "webrtc", "onnx"])
def test_events_do_not_depend_on_how_the_stream_is_cut(words, bundle, tmp_path, engine):
    pcm = float_to_pcm16(words.audio)
    whole = make_pipeline(bundle, tmp_path, engine)
    expected = whole.feed(pcm) + whole.flush()

    cut = make_pipeline(bundle, tmp_path, engine)
    events = []
    for chunk in random_chunks(pcm, np.random.default_rng(7)):
        events += cut.feed(chunk)
    events += cut.flush()

    assert as_tuples(events) == as_tuples(expected)
    assert [e.score for e in events] == pytest.approx([e.score for e in expected], abs=1e-5)
    counts = lambda p: {k: (v["received"], v["passed"]) for k, v in p.stats().items()}  # noqa: E731
    assert counts(cut) == counts(whole)
    # And the events are the words: one per word, each overlapping it.
    assert len(events) == len(words.speech)
    for event, (a, b) in zip(events, words.speech, strict=True):
        assert event.label == "speech"
        assert event.start < b / RATE and event.end > a / RATE


def test_stats_count_each_stage_and_are_json_ready(words, bundle, tmp_path):
    pipeline = make_pipeline(bundle, tmp_path, "energy")
    events = pipeline.run(words.audio)
    stats = json.loads(json.dumps(pipeline.stats()))
    assert list(stats) == ["vad", "window", "features", "model", "postprocess"]
    assert stats["vad"]["received"] == words.audio.shape[0]
    assert stats["window"]["received"] == stats["vad"]["passed"]
    assert stats["features"]["received"] == stats["window"]["passed"] > 0
    assert stats["model"]["received"] == stats["features"]["passed"]
    assert stats["postprocess"]["received"] == stats["model"]["passed"]
    assert stats["postprocess"]["passed"] == len(events)
    # The VAD dropped the gaps between words: what it kept is speech plus padding.
    speech = sum(b - a for a, b in words.speech) / words.audio.shape[0]
    assert speech < stats["vad"]["kept_share"] < 0.7
    assert stats["vad"]["segments"] == len(words.speech)
    for stage in stats.values():
        latency = stage["latency_ms"]
        assert latency["count"] == sum(latency["buckets"].values()) > 0
        assert 0 <= latency["mean"] <= latency["max"]


def test_a_pipeline_can_be_fed_again_after_flush(words, bundle, tmp_path):
    pipeline = make_pipeline(bundle, tmp_path, "energy")
    first = pipeline.run(words.audio)
    second = pipeline.run(float_to_pcm16(words.audio))
    assert as_tuples(second) == as_tuples(first)  # times restart at 0 for the new stream
    assert pipeline.stats()["vad"]["received"] == 2 * words.audio.shape[0]


def test_window_stage_never_spans_a_gap_and_pads_short_speech():
    stage = WindowStage("window", RATE, length_ms=1000, hop_ms=250)
    ones = lambda n: np.ones(n, np.float32)  # noqa: E731
    out = stage.process(
        [
            Audio(0, ones(20000)),  # 1.25 s of speech ...
            Audio(20000, ones(0), ends_segment=True),
            Audio(50000, ones(8000), ends_segment=True),  # ... and a 0.5 s word after a gap
        ]
    )
    spans = [(w.start, w.end, w.segment) for w in out]
    assert spans == [
        (0, 16000, 0),
        (4000, 20000, 0),  # the last full window reaches the end: nothing to pad
        (50000, 58000, 1),  # shorter than a window: one window, zero-padded
    ]
    assert out[2].data.shape == (16000,)
    assert np.all(out[2].data[8000:] == 0) and np.all(out[2].data[:8000] == 1)


def window(scores: list[float], start_s: float, segment: int = 0) -> Window:
    start = int(start_s * RATE)
    return Window(start, start + RATE, segment, np.array(scores, np.float32))


def test_postprocess_smooths_thresholds_and_waits_out_the_refractory_time():
    stage = PostprocessStage(
        "post", RATE, ["yes", "other"], {"yes": 0.6}, smooth_windows=3, refractory_ms=1000
    )
    # One confident window among unsure ones is smoothed away.
    assert stage.process([window([0.1, 0.9], 0.0), window([0.7, 0.3], 0.1),
                          window([0.1, 0.9], 0.2)]) == []  # fmt: skip
    # Three confident windows fire once; the refractory time keeps the next ones quiet.
    hop = [window([0.9, 0.1], 0.3 + 0.1 * i) for i in range(8)]
    events = stage.process(hop)
    assert [e.label for e in events] == ["yes"]
    assert events[0].start == pytest.approx(0.4)  # the audio the averaged windows share
    assert events[0].end == pytest.approx(1.2)
    # After the refractory time, a new stretch of speech fires again (its own smoothing).
    late = stage.process([window([0.9, 0.1], 3.0, segment=1)])
    assert [(e.label, e.start) for e in late] == [("yes", 3.0)]


def test_log_mel_puts_a_tone_in_its_mel_band():
    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = log_mel(tone, RATE, n_mels=40, n_fft=512, hop=320)
    assert mel.shape == (49, 40)
    loudest = int(np.argmax(mel.mean(axis=0)))
    centres = 700 * (10 ** (np.linspace(2595 * np.log10(1 + 20 / 700),
                                       2595 * np.log10(1 + 8000 / 700), 42)[1:-1] / 2595) - 1)  # fmt: skip
    assert abs(centres[loudest] - 1000) < 120
    # Batches give the same features as one window at a time.
    batch = log_mel(np.stack([tone, tone[::-1].copy()]), RATE)
    assert np.array_equal(batch[0], mel)


def test_pcm_round_trip_and_odd_byte_chunks():
    samples = np.array([0, 1, -1, 32767, -32768], np.int16)
    pcm = samples.tobytes()
    assert np.array_equal(np.round(pcm16_to_float(pcm) * 32768).astype(np.int16), samples)
    assert float_to_pcm16(pcm16_to_float(pcm)) == pcm
