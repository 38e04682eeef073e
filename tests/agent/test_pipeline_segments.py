"""Speech segments as a pipeline's output: from Python, the CLI and the agent's HTTP stream."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.agent.pipeline_fixtures import RATE, Recording, speak, words_with_gaps
from tests.conftest import run_edgedl

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.audio import float_to_pcm16, read_wav
from edgedl.agent.pipeline.config import PipelineConfig
from edgedl.agent.pipeline.pipeline import Pipeline, build_pipeline
from edgedl.agent.pipeline.stream import Segment

PAD_S, HANGOVER_S = 0.2, 0.3
VAD_TOML = """
[[pipelines]]
name = "speech"
sample_rate = 16000

[[pipelines.stages]]
type = "vad"
engine = "onnx"
pad_ms = 200
hangover_ms = 300
"""


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    tmp = tmp_path_factory.mktemp("espeak")
    phrases = ("turn the lights on", "seven", "stop the music please")
    return words_with_gaps([speak(p, tmp) for p in phrases])


def vad_pipeline(engine: str, **options: object) -> Pipeline:
    config = PipelineConfig.model_validate(
        {
            "name": "v",
            "stages": [
                {"type": "vad", "engine": engine, "pad_ms": 200, "hangover_ms": 300, **options}
            ],
        }
    )
    return build_pipeline(config)


def assert_match(segments: list[Segment], speech: list[tuple[int, int]], frame_s: float) -> None:
    """One segment per utterance, starting within the padding before it and ending within the
    hangover after it (plus the frame the engine decides on and its own lag)."""
    assert len(segments) == len(speech)
    for seg, (a, b) in zip(segments, speech, strict=True):
        start, end = a / RATE, b / RATE
        assert start - PAD_S - 2 * frame_s <= seg.start <= start
        assert end <= seg.end <= end + HANGOVER_S + 0.15


@pytest.mark.parametrize(
    ("engine", "options", "frame_s"),
    [("onnx", {}, 0.032), ("webrtc", {"aggressiveness": 3, "warmup_ms": 120}, 0.03),
     ("energy", {}, 0.02)],
)  # fmt: skip
def test_a_vad_only_pipeline_gives_the_speech_segments(words, engine, options, frame_s):
    pipeline = vad_pipeline(engine, **options)
    assert pipeline.emit_segments  # a pipeline that ends with a VAD gives its segments
    outputs = pipeline.run(words.audio)
    assert all(o.kind == "segment" for o in outputs)
    assert_match(outputs, words.speech, frame_s)  # type: ignore[arg-type]
    assert {o.engine for o in outputs} == {engine}  # type: ignore[union-attr]
    assert pipeline.stats()["vad"]["segments"] == len(outputs)


def test_silero_segments_carry_its_speech_probability(words):
    segments = vad_pipeline("onnx").segments(words.audio)
    for s in segments:
        assert s.mean_probability is not None and s.peak_probability is not None
        assert 0.3 < s.mean_probability < s.peak_probability <= 1
    assert all(s.mean_probability is None for s in vad_pipeline("energy").segments(words.audio))


def test_webrtc_warm_up_drops_the_false_start_of_a_stream(words):
    # A fresh WebRTC detector calls the stream's first ~100 ms speech, even in a quiet room.
    cold = vad_pipeline("webrtc", aggressiveness=3).segments(words.audio)
    warm = vad_pipeline("webrtc", aggressiveness=3, warmup_ms=120).segments(words.audio)
    assert cold[0].start == 0 and cold[0].end < words.speech[0][0] / RATE
    assert len(cold) == len(warm) + 1 and warm == cold[1:]


def test_merge_touching_joins_segments_split_by_a_pause_just_past_the_hangover(tmp_path):
    close = words_with_gaps([speak(w, tmp_path) for w in ("seven", "stop")], gap_s=0.45)
    apart = vad_pipeline("onnx").segments(close.audio)
    assert len(apart) == 2 and apart[0].end == apart[1].start  # they touch
    merged = vad_pipeline("onnx", merge_touching=True).segments(close.audio)
    assert [(m.start, m.end) for m in merged] == [(apart[0].start, apart[1].end)]
    # A real pause still separates them.
    far = words_with_gaps([speak(w, tmp_path) for w in ("seven", "stop")], gap_s=0.9)
    assert len(vad_pipeline("onnx", merge_touching=True).segments(far.audio)) == 2


def test_segments_stay_off_in_a_detection_pipeline_unless_asked():
    config = {"name": "v", "stages": [{"type": "vad"}, {"type": "window"}]}
    assert not build_pipeline(PipelineConfig.model_validate(config)).emit_segments
    config["segments"] = True
    assert build_pipeline(PipelineConfig.model_validate(config)).emit_segments


@pytest.mark.slow
def test_the_same_segments_from_the_cli_http_and_python(words, tmp_path, agent_process):
    config = tmp_path / "agent.toml"
    config.write_text(VAD_TOML)
    wav = words.save(tmp_path / "words.wav")

    audio, _ = read_wav(wav)  # what all three hear: the 16-bit samples of the file
    python = [s.to_dict() for s in build_pipeline(load_config(config).pipelines[0]).run(audio)]
    assert_match(
        [Segment(**{k: v for k, v in s.items() if k != "kind"}) for s in python],
        words.speech,
        0.032,
    )

    cli = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav, "--json")
    assert cli.code == 0, cli.stderr
    from_cli = [json.loads(line) for line in cli.stdout.splitlines()]

    agent = agent_process("--config", config)
    pcm = float_to_pcm16(audio)
    from_http: list[dict[str, object]] = []
    with httpx.Client(base_url=agent.url, timeout=30) as client:
        for i in range(0, len(pcm), 8001):
            r = client.post("/v2/pipelines/speech/stream", content=pcm[i : i + 8001])
            assert r.status_code == 200, r.text
            from_http += r.json()["events"]
        from_http += client.post("/v2/pipelines/speech/stream?end=true").json()["events"]
    assert python == from_cli == from_http
    assert [s["kind"] for s in python] == ["segment"] * len(words.speech)


@pytest.mark.slow
def test_profile_is_written_for_a_validated_pipeline(words, tmp_path):
    config = tmp_path / "agent.toml"
    config.write_text(VAD_TOML)
    wav = words.save(tmp_path / "words.wav")
    out = tmp_path / "profile.json"
    r = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav, "--profile", out)
    assert r.code == 0, r.stderr
    profile = json.loads(Path(out).read_text())
    assert profile["pipeline"] == "speech"
    assert profile["counters"]["audio_s"] == pytest.approx(words.audio.shape[0] / RATE, abs=1e-3)
    assert profile["counters"]["segments"] == len(words.speech)
    speech_s = sum(b - a for a, b in words.speech) / RATE
    kept = profile["figures"]["kept_share"]
    assert speech_s / (words.audio.shape[0] / RATE) < kept < 1
    bad = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav,
                     "--profile", tmp_path / "no" / "such" / "dir" / "p.json")  # fmt: skip
    assert bad.code != 0 and "Traceback" not in bad.stderr
