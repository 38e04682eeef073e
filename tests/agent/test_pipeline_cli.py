"""``edgedl agent run-pipeline``: events from a WAV file or stdin, a stage table, clear errors."""

from __future__ import annotations

import json
import subprocess
import wave
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
from tests.conftest import EDGEDL, run_edgedl

from edgedl.agent.pipeline.audio import float_to_pcm16, write_wav


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Recording]:
    tmp = tmp_path_factory.mktemp("cli")
    words = words_with_gaps([speak(w, tmp) for w in ("yes", "seven", "stop")])
    wav = words.save(tmp / "words.wav")
    config = tmp / "agent.toml"
    config.write_text(pipeline_toml(loudness_bundle(tmp / "bundle")))
    return config, wav, words


def test_prints_one_line_per_event_then_the_stage_table(setup):
    config, wav, words = setup
    result = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    events = [
        ln.split() for ln in lines if ln.strip().endswith(tuple("0123456789")) and "speech" in ln
    ]
    assert len(events) == len(words.speech)
    assert float(events[0][0].rstrip("s")) < words.speech[0][1] / RATE
    table = result.stdout[result.stdout.index("pipeline loud") :]
    for stage in ("vad", "window", "features", "model", "postprocess"):
        assert stage in table
    assert f"{words.audio.shape[0]} samples" in table
    assert f"{len(words.speech)} events" in table


def test_json_lines_on_stdout_and_the_table_on_stderr(setup):
    config, wav, words = setup
    result = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav, "--json")
    assert result.code == 0, result.stderr
    events = [json.loads(ln) for ln in result.stdout.splitlines()]
    assert [e["label"] for e in events] == ["speech"] * len(words.speech)
    assert set(events[0]) == {"kind", "label", "start", "end", "score"}
    assert events[0]["kind"] == "detection"
    assert "postprocess" in result.stderr


def test_raw_pcm_on_stdin_gives_the_same_events_as_the_wav(setup):
    config, wav, words = setup
    from_file = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav, "--json")
    proc = subprocess.run(
        [EDGEDL, "agent", "run-pipeline", "--config", str(config), "--input", "-", "--json"],
        input=float_to_pcm16(words.audio), capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == from_file.stdout.splitlines()


def test_stdin_at_another_sample_rate_is_refused(setup):
    config, _, _ = setup
    proc = subprocess.run(
        [EDGEDL, "agent", "run-pipeline", "--config", str(config), "--input", "-",
         "--sample-rate", "8000"],
        input=b"\0" * 1000, capture_output=True, text=False, timeout=60,
    )  # fmt: skip
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1
    assert len(err) == 1 and "8000 Hz, but pipeline 'loud' expects 16000 Hz" in err[0]


def test_a_wav_at_the_wrong_sample_rate_is_one_line(setup, tmp_path):
    config, _, _ = setup
    wav = tmp_path / "44k.wav"
    write_wav(wav, np.zeros(44100, np.float32), 44100)
    result = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav)
    assert result.code == 1
    assert "44100 Hz, but pipeline 'loud' expects 16000 Hz" in result.last_error_line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [b"not a wav file at all", b""])
def test_a_file_that_is_not_a_wav_is_one_line(setup, tmp_path, content):
    config, _, _ = setup
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    result = run_edgedl("agent", "run-pipeline", "--config", config, "--input", bad)
    assert result.code == 1
    assert "not a readable WAV file" in result.last_error_line
    assert "Traceback" not in result.stderr


def test_an_8_bit_wav_is_refused(setup, tmp_path):
    config, _, _ = setup
    path = tmp_path / "8bit.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(RATE)
        w.writeframes(b"\x80" * RATE)
    result = run_edgedl("agent", "run-pipeline", "--config", config, "--input", path)
    assert result.code == 1
    assert "8-bit WAV; only 16-bit PCM is supported" in result.last_error_line


def test_a_missing_model_is_one_line(setup, tmp_path):
    _, wav, _ = setup
    config = tmp_path / "agent.toml"
    config.write_text(pipeline_toml(tmp_path / "no-such-bundle"))
    result = run_edgedl("agent", "run-pipeline", "--config", config, "--input", wav)
    assert result.code == 1
    assert "stage 'model': bundle not found" in result.last_error_line
    assert "Traceback" not in result.stderr


def test_choosing_among_several_pipelines(setup, tmp_path):
    config, wav, _ = setup
    two = tmp_path / "two.toml"
    two.write_text(
        config.read_text() + config.read_text().replace('name = "loud"', 'name = "other"')
    )
    result = run_edgedl("agent", "run-pipeline", "--config", two, "--input", wav)
    assert result.code == 2
    assert "2 pipelines (loud, other): pick one with --pipeline" in result.last_error_line
    result = run_edgedl(
        "agent", "run-pipeline", "--config", two, "--input", wav, "--pipeline", "nope"
    )
    assert "no pipeline 'nope'" in result.last_error_line
    result = run_edgedl(
        "agent", "run-pipeline", "--config", two, "--input", wav, "--pipeline", "other"
    )
    assert result.code == 0, result.stderr
    assert "pipeline other" in result.stdout
