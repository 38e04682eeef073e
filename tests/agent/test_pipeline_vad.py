"""The three VAD engines on real speech (espeak-ng) padded with silence and noise."""

from __future__ import annotations

import numpy as np
import pytest
from tests.agent.pipeline_fixtures import RATE, Recording, padded_utterance, speak

from edgedl.agent.pipeline.config import PipelineConfig
from edgedl.agent.pipeline.stream import Audio
from edgedl.agent.pipeline.vad import VadStage, build_vad


@pytest.fixture(scope="module")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    speech = speak("turn the kitchen lights on please", tmp_path_factory.mktemp("espeak"))
    return padded_utterance(speech, snr_db=20)


def vad(engine: str, **options: object) -> VadStage:
    config = PipelineConfig.model_validate(
        {"name": "v", "stages": [{"type": "vad", "engine": engine, **options}]}
    )
    return build_vad("vad", config.stages[0], config.sample_rate)  # type: ignore[arg-type]


def kept_mask(stage: VadStage, audio: np.ndarray) -> np.ndarray:
    kept = np.zeros(audio.shape[0], dtype=bool)
    for piece in stage.process([Audio(0, audio)]) + stage.flush():
        kept[piece.start : piece.end] = True
    return kept


@pytest.mark.parametrize("engine", ["energy", "webrtc", "onnx"])
def test_each_engine_keeps_the_speech_and_drops_the_silence(utterance, engine):
    stage = vad(engine)
    kept = kept_mask(stage, utterance.audio)
    speech = utterance.speech_mask()
    silence = np.zeros_like(speech)
    silence[: RATE * 3 // 2] = silence[-RATE * 3 // 2 :] = True  # the quiet room at both ends
    assert kept[speech].mean() > 0.98
    assert 1 - kept[silence].mean() > 0.75
    # The utterance is kept in one piece (the energy engine may also keep the start of the
    # noise, until its floor catches up), and the stage's own counters agree.
    (start, end) = utterance.speech[0]
    assert kept[start:end].all()
    assert 1 <= stage.segments <= 2
    assert stage.stats.passed == kept.sum()
    assert stage.extra_stats()["kept_share"] == pytest.approx(kept.mean(), abs=1e-3)


@pytest.mark.parametrize("engine", ["energy", "onnx"])
def test_energy_and_silero_also_drop_steady_noise(utterance, engine):
    # WebRTC's VAD takes steady white noise at -40 dBFS for speech; these two do not.
    kept = kept_mask(vad(engine), utterance.audio)
    assert 1 - kept[~utterance.speech_mask()].mean() > 0.6


def test_padding_and_hangover_surround_the_speech(utterance):
    (start, end) = utterance.speech[0]
    kept = np.flatnonzero(kept_mask(vad("onnx", pad_ms=300, hangover_ms=500), utterance.audio))
    first, last = kept[0] / RATE, kept[-1] / RATE
    assert start / RATE - 0.45 < first < start / RATE - 0.25
    assert end / RATE + 0.3 < last < end / RATE + 0.75


def test_min_speech_ignores_a_click():
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(RATE * 3) * 1e-3).astype(np.float32)
    audio[RATE : RATE + 160] += 0.5  # a 10 ms click
    assert kept_mask(vad("energy"), audio).any()
    assert not kept_mask(vad("energy", min_speech_ms=60), audio).any()


def test_onnx_engine_rejects_a_model_without_silero_interface(tmp_path):
    from tests.agent.pipeline_fixtures import loudness_bundle

    from edgedl.errors import ConfigError

    model = loudness_bundle(tmp_path / "b").parent / "loudness.onnx"
    config = PipelineConfig.model_validate(
        {"name": "v", "stages": [{"type": "vad", "engine": "onnx", "model_path": str(model)}]}
    )
    with pytest.raises(ConfigError, match="Silero's interface"):
        build_vad("vad", config.stages[0], 16000)  # type: ignore[arg-type]
