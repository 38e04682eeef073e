"""Posting audio to a running agent (``edgedl agent serve``) and reading its pipeline stats."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from tests.agent.pipeline_fixtures import (
    Recording,
    loudness_bundle,
    pipeline_toml,
    speak,
    words_with_gaps,
)

from edgedl.agent.config import load_config
from edgedl.agent.pipeline.audio import float_to_pcm16
from edgedl.agent.pipeline.pipeline import build_pipeline


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    tmp = tmp_path_factory.mktemp("espeak")
    return words_with_gaps([speak(w, tmp) for w in ("yes", "seven", "stop", "go")])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    text = pipeline_toml(loudness_bundle(tmp_path / "bundle"))
    path.write_text(text + "\n[server]\nmax_request_bytes = 100000\n")
    return path


def test_chunks_posted_to_the_agent_give_the_events_of_the_whole_recording(
    words, config, agent_process
):
    expected = build_pipeline(load_config(config).pipelines[0]).run(words.audio)
    agent = agent_process("--config", config)
    pcm = float_to_pcm16(words.audio)
    events = []
    with httpx.Client(base_url=agent.url, timeout=30) as client:
        listing = client.get("/v2/pipelines").json()
        assert listing["pipelines"][0]["name"] == "loud"
        assert listing["pipelines"][0]["sample_rate"] == 16000
        chunk = 3201  # odd: a sample split between two posts is put back together
        for i in range(0, len(pcm), chunk):
            r = client.post("/v2/pipelines/loud/stream", content=pcm[i : i + chunk])
            assert r.status_code == 200, r.text
            events += r.json()["events"]
        assert r.json()["position_s"] == pytest.approx(words.audio.shape[0] / 16000, abs=1e-3)
        r = client.post("/v2/pipelines/loud/stream?end=true", content=b"")
        events += r.json()["events"]
        assert [(e["label"], e["start"], e["end"]) for e in events] == [
            (e.label, round(e.start, 3), round(e.end, 3)) for e in expected
        ]
        stats = client.get("/v2/pipelines/loud/stats").json()["stages"]
    assert stats["vad"]["received"] == words.audio.shape[0]
    assert stats["postprocess"]["passed"] == len(expected) == len(words.speech)
    assert 0 < stats["vad"]["kept_share"] < 1


def test_bad_requests_get_a_4xx_and_the_pipeline_keeps_working(words, config, agent_process):
    agent = agent_process("--config", config)
    with httpx.Client(base_url=agent.url, timeout=30) as client:
        r = client.post("/v2/pipelines/nope/stream", content=b"\0\0")
        assert r.status_code == 404
        assert "no pipeline 'nope' (pipelines: loud)" in r.json()["error"]
        assert client.get("/v2/pipelines/nope/stats").status_code == 404
        r = client.post("/v2/pipelines/loud/stream", content=b"\0" * 200_000)
        assert r.status_code == 413
        r = client.post("/v2/pipelines/loud/stream", content=b"")
        assert r.status_code == 200 and r.json()["events"] == []
        # Noise at full scale is still just audio: no crash, and speech afterwards is heard.
        noise = np.random.default_rng(0).integers(-32768, 32767, 16000, dtype=np.int16)
        assert client.post("/v2/pipelines/loud/stream", content=noise.tobytes()).status_code == 200
        pcm = float_to_pcm16(words.audio)
        events = []
        for i in range(0, len(pcm), 64000):
            events += client.post("/v2/pipelines/loud/stream", content=pcm[i : i + 64000]).json()[
                "events"
            ]
        events += client.post("/v2/pipelines/loud/stream?end=true").json()["events"]
        assert len([e for e in events if e["label"] == "speech"]) >= len(words.speech)
        assert client.get("/v2/health/live").status_code == 200


def test_the_agent_refuses_to_start_with_a_pipeline_it_cannot_build(tmp_path, agent_process):
    config = tmp_path / "agent.toml"
    config.write_text(pipeline_toml(tmp_path / "no-such-bundle"))
    agent = agent_process("--config", config, wait=False)
    assert agent.proc.wait(60) == 1
    lines = [ln for ln in agent.output.splitlines() if ln.strip()]
    assert "pipeline 'loud', stage 'model': bundle not found" in lines[-1]
    assert "Traceback" not in agent.output
