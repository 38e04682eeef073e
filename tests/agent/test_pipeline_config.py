"""[[pipelines]] in agent.toml: typed stages, errors that name the key, the docs' example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.agent.pipeline_fixtures import loudness_bundle, pipeline_toml

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.config import (
    EnergyVadConfig,
    FeaturesConfig,
    ModelStageConfig,
    OnnxVadConfig,
    PostprocessConfig,
    WebrtcVadConfig,
    WindowConfig,
)
from edgedl.agent.pipeline.pipeline import build_pipeline
from edgedl.errors import BundleError, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def toml_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", markdown.read_text(), flags=re.S)


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config(path, env={})


def test_the_docs_example_is_a_valid_pipeline(tmp_path):
    block, voice = toml_blocks(ROOT / "docs/pipelines.md")
    (asr,) = load(tmp_path, voice).pipelines
    assert [s.type for s in asr.stages] == ["vad", "asr"] and asr.emits_segments
    (pipeline,) = load(tmp_path, block).pipelines
    assert pipeline.name == "keywords"
    assert [type(s) for s in pipeline.stages] == [
        WebrtcVadConfig, WindowConfig, FeaturesConfig, ModelStageConfig, PostprocessConfig
    ]  # fmt: skip
    assert pipeline.stages[-1].thresholds == {"yes": 0.6, "stop": 0.6}


def test_the_example_config_matches_the_docs(tmp_path):
    (docs,) = load(tmp_path, toml_blocks(ROOT / "docs/pipelines.md")[0]).pipelines
    example = load_config(ROOT / "examples/keyword_spotting/agent.toml", env={}).pipelines[0]
    strip = lambda p: [s.model_dump(exclude={"bundle"}) for s in p.stages]  # noqa: E731
    assert strip(example) == strip(docs)


def test_vad_engine_defaults_to_energy(tmp_path):
    text = '[[pipelines]]\nname = "v"\n[[pipelines.stages]]\ntype = "vad"\n'
    (pipeline,) = load(tmp_path, text).pipelines
    assert isinstance(pipeline.stages[0], EnergyVadConfig)
    assert pipeline.sample_rate == 16000


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ('type = "vad"\naggressiveness = 2', r"stages\.0.*aggressiveness: Extra inputs"),
        ('type = "vad"\nengine = "silero"', r"stages\.0.*engine must be one of"),
        ('type = "windows"', r"stages\.0.*type must be one of 'vad', 'window'"),
        ('type = "window"\nhop_ms = 2000', r"hop_ms must not exceed length_ms"),
        ('type = "features"', r"stages\[0\] \(features\) cannot follow a stage that produces audio"),
        ('type = "vad"\nengine = "webrtc"\nframe_ms = 25', r"frame_ms: Input should be 10, 20 or 30"),
        ('type = "vad"\nengine = "onnx"\nthreshold = 1.5', r"threshold: Input should be less than 1"),
    ],
)  # fmt: skip
def test_a_bad_stage_is_an_error_naming_the_key(tmp_path, stages, message):
    text = f'[[pipelines]]\nname = "p"\n[[pipelines.stages]]\n{stages}\n'
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)


def test_an_engine_that_cannot_take_the_sample_rate_is_refused(tmp_path):
    text = '[[pipelines]]\nname = "p"\nsample_rate = 22050\n[[pipelines.stages]]\ntype = "vad"\nengine = "webrtc"\n'  # fmt: skip
    with pytest.raises(ConfigError, match=r"webrtc VAD needs a sample rate in \(8000, 16000, 32000, 48000\), not 22050"):  # fmt: skip
        load(tmp_path, text)
    assert isinstance(
        load(tmp_path, text.replace("webrtc", "onnx").replace("22050", "8000")).pipelines[0].stages[0],
        OnnxVadConfig,
    )  # fmt: skip


def test_a_missing_bundle_names_the_pipeline_and_stage(tmp_path):
    (config,) = load(tmp_path, pipeline_toml(tmp_path / "nowhere")).pipelines
    with pytest.raises(BundleError, match=r"pipeline 'loud', stage 'model': bundle not found"):
        build_pipeline(config)


def test_features_that_do_not_fit_the_model_are_refused_at_start(tmp_path):
    bundle = loudness_bundle(tmp_path / "b")
    text = pipeline_toml(bundle).replace("length_ms = 1000", "length_ms = 500")
    (config,) = load(tmp_path, text).pipelines
    with pytest.raises(ConfigError, match=r"stage 'model': the model takes \[49, 40, 1\] per sample but the stage before gives \[24, 40\]"):  # fmt: skip
        build_pipeline(config)


def test_a_threshold_for_a_label_the_model_lacks_is_refused(tmp_path):
    bundle = loudness_bundle(tmp_path / "b")
    text = pipeline_toml(bundle).replace("speech = 0.5", "yes = 0.5")
    (config,) = load(tmp_path, text).pipelines
    with pytest.raises(ConfigError, match=r"thresholds.yes: no such class \(the model's classes: speech, quiet\)"):  # fmt: skip
        build_pipeline(config)
