"""A new loud noise source at a device raises a stage-health alert on the collector.

Real parts throughout: the pipeline's reference profile written by ``edgedl agent
run-pipeline --profile`` on validation audio, ``edgedl agent serve`` hearing a stream over
HTTP and publishing telemetry to a Mosquitto of the test's own, and ``edgedl collector run``
judging the windows against the profile. The VAD is WebRTC's, which takes loud steady noise
for speech: a fan switched on next to the microphone makes it keep nearly all of the stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.pipeline_fixtures import speak, words_with_gaps
from tests.conftest import run_edgedl
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import wait_until
from tests.mqtt_broker import MosquittoBroker

from edgedl.agent.pipeline.audio import float_to_pcm16, write_wav

pytestmark = pytest.mark.slow

AGENT_TOML = """
[telemetry]
spool_path = "{spool}"
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[[pipelines]]
name = "voice"
sample_rate = 16000

[[pipelines.stages]]
type = "vad"
engine = "webrtc"
aggressiveness = 3
warmup_ms = 120
"""


def test_a_new_loud_noise_source_raises_a_stage_drift_alert(
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    phrases = ("turn the lights on", "seven", "stop the music please", "what time is it")
    speech = words_with_gaps([speak(p, tmp_path) for p in phrases], gap_s=2.0).audio
    clean = np.concatenate([speech, speech])  # ~28 s: enough audio to be judged
    rng = np.random.default_rng(3)
    fan = (clean + rng.standard_normal(clean.shape[0]) * 0.1).astype(np.float32)  # 0 dB SNR

    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML.format(spool=tmp_path / "spool.db"))
    write_wav(tmp_path / "validation.wav", clean, 16000)
    profile = tmp_path / "voice.json"
    r = run_edgedl("agent", "run-pipeline", "--config", config,
                   "--input", tmp_path / "validation.wav", "--profile", profile)  # fmt: skip
    assert r.code == 0, r.stderr
    reference = json.loads(profile.read_text())["figures"]
    assert 0.3 < reference["kept_share"] < 0.6

    collector = collector_process("--pipeline-reference", profile)
    agent = agent_process(
        "--config", config, "--mqtt", e2e_broker.url,
        "--fleet", "homes", "--device", "kitchen", "--telemetry-interval", "0.5",
    )  # fmt: skip

    def post(audio: np.ndarray[Any, Any]) -> None:
        pcm = float_to_pcm16(audio)
        with httpx.Client(base_url=agent.url, timeout=30) as client:
            for i in range(0, len(pcm), 64000):
                r = client.post("/v2/pipelines/voice/stream", content=pcm[i : i + 64000])
                assert r.status_code == 200, r.text
            client.post("/v2/pipelines/voice/stream?end=true")

    def health() -> dict[str, Any] | None:
        results = collector.get("/api/v1/stage-health", device="kitchen")
        return results[0] if results else None

    def stage_alerts() -> list[dict[str, Any]]:
        return [a for a in collector.get("/api/v1/alerts") if a["kind"] == "stage"]

    # The stream the pipeline was validated on: judged, within its reference, no alert.
    post(clean)
    wait_until(
        lambda: (h := health()) is not None and h["judged"] and h["counters"]["audio_s"] >= 28,
        60,
        "the clean stream judged",
    )
    h = health()
    assert h is not None and h["pipeline"] == "voice"
    assert not any(v["alert"] for v in h["verdicts"].values()), h
    assert stage_alerts() == []

    # A fan switched on: the VAD now keeps nearly everything.
    post(fan)
    post(fan)
    wait_until(
        lambda: any(a["metric"] == "kept_share" for a in stage_alerts()),
        60,
        "a stage alert on the VAD's kept share",
    )
    [alert] = [a for a in stage_alerts() if a["metric"] == "kept_share"]
    assert alert["device"] == "kitchen" and alert["model"] == "voice"
    assert alert["value"] > alert["threshold"] == 0.2
    h = health()
    assert h is not None and h["figures"]["kept_share"] > reference["kept_share"] + 0.2
    assert agent.terminate() == 0
