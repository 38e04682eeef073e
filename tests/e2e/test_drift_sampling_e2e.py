"""Sampling during an open drift alert, end to end: agent -> Mosquitto -> collector -> agent.

A real agent serves the digits bundle with ``[sampling] rate = 0.05, during_drift_rate = 1``;
a real collector judges its windows against the bundle's reference. Clean digits: no drift
alert, and only ``rate`` samples leave the device. Brighter, noisier digits: the collector
opens a drift alert, retains a drift notice for the device, and every inference is kept as a
``drift`` sample. Clean digits again: the alert resolves, the notice empties, and ``drift``
samples stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import AGENT_TOML, send, wait_until
from tests.mqtt_broker import MosquittoBroker, Recorder

from edgedl.drift_notice import decode_notice, drift_topic
from edgedl.samples import SampleMessage, decode_sample, samples_topic

pytestmark = pytest.mark.slow

SAMPLING = """
[sampling]
rate = 0.05
during_drift_rate = 1.0
max_per_hour = 100000
queue_size = 4096
max_disk_bytes = 100000000
"""

COLLECTOR_TOML = """
[drift]
window_count = 3
min_samples = 200
alert_on = ["psi"]
[alerts]
drift_notice_ttl_s = 60
"""


def test_drift_samples_flow_while_the_drift_alert_is_open(
    digits_bundle: Callable[..., Path],
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    bundle = digits_bundle("tflite-int8")
    (tmp_path / "collector.toml").write_text(COLLECTOR_TOML)
    collector = collector_process("--config", tmp_path / "collector.toml", "--reference", bundle)
    everything = Recorder(e2e_broker.url, ["#"])
    folder = tmp_path / "pi-7"
    folder.mkdir()
    (folder / "agent.toml").write_text(AGENT_TOML.format(spool=folder / "spool.db") + SAMPLING)
    agent = agent_process(
        "--config", folder / "agent.toml", "--model", bundle, "--mqtt", e2e_broker.url,
        "--fleet", "factory-7", "--device", "pi-7", "--telemetry-interval", "0.5",
    )  # fmt: skip

    def samples() -> list[SampleMessage]:
        topic = samples_topic("factory-7", "pi-7")
        found = [decode_sample(m.payload) for m in list(everything.messages) if m.topic == topic]
        return [s for s in found if isinstance(s, SampleMessage)]

    def notices() -> list[Any]:
        topic = drift_topic("factory-7", "pi-7")
        return [decode_notice(m.payload) for m in list(everything.messages) if m.topic == topic]

    def open_drift() -> list[dict[str, Any]]:
        alerts = collector.get("/api/v1/alerts", state="open")
        return [a for a in alerts if a["kind"] == "drift" and a["device"] == "pi-7"]

    images = digit_images(600, start=1000)
    rng = np.random.default_rng(0)
    shifted = np.clip(0.5 * images + 0.4 + rng.normal(0, 0.08, images.shape), 0, 1)
    shifted = shifted.astype(np.float32)

    # No drift: only the normal rate's samples.
    send(agent, images)
    wait_until(lambda: collector.get("/api/v1/devices/pi-7")["inferences"] == 600, 60, "600")
    wait_until(lambda: len(collector.get("/api/v1/drift", device="pi-7")) > 0, 60, "judged")
    assert open_drift() == []
    wait_until(lambda: len(samples()) > 0, 30, "rate samples")
    assert {s.reason for s in samples()} == {"rate"}
    assert all(not n.drifting for n in notices())

    # Drift: the alert opens, the notice names the version, every inference is sampled.
    send(agent, shifted)
    wait_until(lambda: bool(open_drift()), 60, "a drift alert for pi-7")
    wait_until(lambda: any(n.drifting for n in notices()), 30, "a drift notice")
    (drifting,) = [n for n in notices() if n.drifting][-1].drifting
    assert {(drifting.model, drifting.version)} == {
        (a["model"], a["version"]) for a in open_drift()
    }
    before = len(samples())
    send(agent, shifted[:200])
    wait_until(lambda: sum(s.reason == "drift" for s in samples()) >= 190, 60, "drift samples")
    assert len(samples()) - before >= 190

    # Clean again: the alert resolves, the notice empties, drift samples stop.
    for _ in range(20):
        send(agent, images[:300])
        if not open_drift():
            break
    wait_until(lambda: not open_drift(), 60, f"the drift alert to resolve: {open_drift()}")
    wait_until(lambda: not notices()[-1].drifting, 30, "an empty drift notice")
    # Samples chosen before the agent heard of the resolution may still be on their way;
    # those chosen after it (a second later, on the agent's clock) are rate samples only.
    time.sleep(1.0)
    after = time.time()
    send(agent, images[:400])
    wait_until(lambda: sum(s.time > after for s in samples()) >= 5, 30, "samples after the alert")
    time.sleep(1.0)
    assert {s.reason for s in samples() if s.time > after} == {"rate"}
    assert agent.terminate() == 0
    everything.close()
