"""The asr stage: PocketSphinx on espeak-ng sentences, one call per segment, over HTTP too."""

from __future__ import annotations

import httpx
import pytest
from tests.agent.pipeline_fixtures import RATE, Recording, speak, words_with_gaps

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.audio import float_to_pcm16
from edgedl.agent.pipeline.config import PipelineConfig
from edgedl.agent.pipeline.pipeline import build_pipeline
from edgedl.agent.pipeline.stream import Segment, Transcript

pytest.importorskip("pocketsphinx")

ASR_TOML = """
[[pipelines]]
name = "voice"
sample_rate = 16000
segments = true

[[pipelines.stages]]
type = "vad"
engine = "onnx"

[[pipelines.stages]]
type = "asr"
max_segment_s = 10
"""


SAID = ("what time is it", "turn the kitchen lights on please")


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    tmp = tmp_path_factory.mktemp("espeak")
    return words_with_gaps([speak(s, tmp, voice="en-us+f2") for s in SAID], gap_s=1.0)


def asr_pipeline(**asr: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "voice",
            "segments": True,
            "stages": [{"type": "vad", "engine": "onnx"}, {"type": "asr", **asr}],
        }
    )


@pytest.mark.slow
def test_one_transcript_per_segment_with_words_and_confidence(sentences):
    pipeline = build_pipeline(asr_pipeline())
    outputs = pipeline.run(sentences.audio)
    segments = [o for o in outputs if isinstance(o, Segment)]
    transcripts = [o for o in outputs if isinstance(o, Transcript)]
    assert len(segments) == len(transcripts) == len(sentences.speech)
    for seg, text in zip(segments, transcripts, strict=True):
        # The recognizer heard exactly the segment's audio, and gives its times.
        assert (text.start, text.end) == pytest.approx((seg.start, seg.end), abs=1e-3)
        assert text.words and text.text == " ".join(text.words)
        assert 0 < text.confidence <= 1
    # PocketSphinx is far from perfect on espeak-ng's formant voices (bench/asr.py measures
    # its word error rate), but it hears most of what was said in each segment.
    for said, text in zip(SAID, transcripts, strict=True):
        assert len(set(said.split()) & set(text.words)) >= len(said.split()) / 2, text.text
    stats = pipeline.stats()["asr"]
    assert stats["calls"] == stats["transcripts"] == len(transcripts)
    assert stats["words"] == sum(len(t.words) for t in transcripts)
    assert stats["received"] == pipeline.stats()["vad"]["passed"]


@pytest.mark.slow
def test_long_speech_is_cut_at_max_segment_s(sentences):
    (a, b) = sentences.speech[1]
    speech = sentences.audio[a - RATE // 4 : b + RATE // 4]  # one utterance of ~1.5 s, no VAD
    config = PipelineConfig.model_validate(
        {"name": "v", "stages": [{"type": "asr", "max_segment_s": 0.5}]}
    )
    pipeline = build_pipeline(config)
    transcripts = pipeline.run(speech)
    n = -(-speech.shape[0] // (RATE // 2))
    assert len(transcripts) == n
    assert all(t.end - t.start <= 0.5 + 1e-9 for t in transcripts)  # type: ignore[union-attr]
    assert transcripts[0].start == 0 and transcripts[-1].end == pytest.approx(
        speech.shape[0] / RATE
    )
    assert pipeline.stats()["asr"]["splits"] == n - 1


def test_asr_needs_16_khz():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="16000"):
        PipelineConfig.model_validate(
            {"name": "v", "sample_rate": 8000, "stages": [{"type": "asr"}]}
        )


@pytest.mark.slow
def test_transcripts_come_as_events_over_http(sentences, tmp_path, agent_process):
    config = tmp_path / "agent.toml"
    config.write_text(ASR_TOML)
    expected = [o.to_dict() for o in build_pipeline(load_config(config).pipelines[0]).run(
        float_to_pcm16(sentences.audio))]  # fmt: skip
    agent = agent_process("--config", config)
    pcm = float_to_pcm16(sentences.audio)
    events: list[dict[str, object]] = []
    with httpx.Client(base_url=agent.url, timeout=60) as client:
        for i in range(0, len(pcm), 16000):
            r = client.post("/v2/pipelines/voice/stream", content=pcm[i : i + 16000])
            assert r.status_code == 200, r.text
            events += r.json()["events"]
        events += client.post("/v2/pipelines/voice/stream?end=true").json()["events"]
        stats = client.get("/v2/pipelines/voice/stats").json()["stages"]
    assert events == expected
    kinds = [e["kind"] for e in events]
    assert kinds.count("transcript") == kinds.count("segment") == len(sentences.speech)
    assert stats["asr"]["transcripts"] == len(sentences.speech)
