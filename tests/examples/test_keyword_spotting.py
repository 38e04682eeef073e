"""The keyword-spotting example end to end, at a reduced size, as its README runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import run_edgedl

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.audio import float_to_pcm16, read_wav
from edgedl.agent.pipeline.pipeline import build_pipeline
from edgedl.bundle import Bundle

ROOT = Path(__file__).resolve().parents[2]

# Measured at --size small (27 keywords in a 115 s stream): precision 0.96, recall 0.93,
# 91% of the silence dropped by the WebRTC VAD. The floors leave room for training noise.
MIN_PRECISION = 0.8
MIN_RECALL = 0.75
MIN_SILENCE_DROPPED = 0.6


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kws")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples/keyword_spotting/demo.py"), "--out", str(out),
         "--size", "small"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| webrtc |" in proc.stdout
    return out


@pytest.mark.slow
def test_keywords_are_found_in_a_stream_the_model_never_heard(demo):
    summary = json.loads((demo / "results.json").read_text())
    (result,) = summary["results"]
    assert result["vad"] == "webrtc"
    assert result["keywords"] >= 20
    assert result["precision"] >= MIN_PRECISION, result["false_alarms"]
    assert result["recall"] >= MIN_RECALL, result["missed"]
    # The VAD kept the words and dropped a good part of what lay between them.
    assert result["silence_dropped_share"] >= MIN_SILENCE_DROPPED
    assert result["vad_kept_share"] < 0.75
    bundle = Bundle.open(demo / "kws-int8")
    assert bundle.manifest.target == "tflite-int8"
    assert bundle.manifest.labels == ["yes", "stop", "unknown", "background"]
    # Held out: none of the stream's voices was used for training.
    truth = json.loads((demo / "test_stream.json").read_text())
    voices = {w["voice"].split("/")[0].split("+")[0] for w in truth["keywords"]}
    assert voices <= {"en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd"}


@pytest.mark.slow
def test_the_readme_command_prints_the_same_detections(demo):
    result = run_edgedl("agent", "run-pipeline", "--config", demo / "agent.toml",
                        "--input", demo / "test_stream.wav", "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    (expected,) = json.loads((demo / "results.json").read_text())["results"]
    assert events == expected["events"]
    assert "kept" in result.stderr and "postprocess" in result.stderr


@pytest.mark.slow
def test_random_chunks_give_the_same_detections_as_one_chunk(demo):
    audio, _ = read_wav(demo / "test_stream.wav")
    pcm = float_to_pcm16(audio[: 16000 * 40])
    config = load_config(demo / "agent.toml").pipelines[0]
    whole = build_pipeline(config).run(pcm)
    pipeline = build_pipeline(config)
    rng = np.random.default_rng(3)
    events, pos = [], 0
    while pos < len(pcm):
        step = int(rng.integers(1, 12000))
        events += pipeline.feed(pcm[pos : pos + step])
        pos += step
    events += pipeline.flush()
    # How many keywords the model finds depends on its training; that chunking changes none
    # of them does not. So: some detections to compare, and the very same ones.
    assert whole, "no detections in the first 40 s: nothing to compare"
    assert [(e.label, e.start, e.end) for e in events] == [(e.label, e.start, e.end) for e in whole]


@pytest.mark.slow
def test_the_readiness_report_of_the_keyword_bundle_shows_its_raw_predictions(demo, tmp_path):
    from tests.readiness.test_report import keep_screenshot
    from tests.readiness_page import assert_page_matches, page_figures, recompute, scores_of

    from edgedl.converters.samples import import_tensorflow

    out = tmp_path / "kws-report"
    result = run_edgedl("report", demo / "kws-int8", "--validation", demo / "validation.npz",
                        "--reference", demo / "keywords.keras", "--output", out)  # fmt: skip
    assert result.code == 0, result.stderr
    shown, facts = page_figures(out / "report.html", tmp_path / "kws-report.png")
    keep_screenshot(tmp_path / "kws-report.png")
    assert facts["remote_requests"] == [] and facts["svg"] >= 4
    val = np.load(demo / "validation.npz")
    x, y = val["x"].astype(np.float32), val["y"]
    import_tensorflow()
    import keras

    reference = keras.models.load_model(demo / "keywords.keras").predict(x, verbose=0)
    expected = {**recompute(scores_of(demo / "kws-int8", x), y, "artifact"),
                **recompute(reference, y, "reference")}  # fmt: skip
    assert_page_matches(shown, expected)
    doc = json.loads((out / "report.json").read_text())
    assert doc["class_names"] == ["yes", "stop", "unknown", "background"]
    # The log-mel features are an image to the suite: [49 frames, 40 bands, 1].
    assert doc["robustness"]["kind"] == "image"
