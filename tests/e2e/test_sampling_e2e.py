"""Samples for retraining end to end: agent -> Mosquitto -> collector -> export -> training.

Two real agents serve the digits bundle to the same traffic, a burst of 400 real digits (ten
times the hourly bound) whose true labels the application sends afterwards: ``pi-on`` has
``[sampling]`` on (every inference, at most 30 an hour and 4 per predicted class), ``pi-off``
has the defaults. The collector (a real process) must hold exactly the bounded samples of
``pi-on``, each once, with their late labels; ``edgedl collector export`` must write a dataset
on which a scikit-learn classifier learns digits well above chance and which ``convert``
takes as calibration data; and a subscriber to ``#`` on the broker must see nothing but
windows and statuses from ``pi-off``.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import AGENT_TOML, wait_until
from tests.mqtt_broker import MosquittoBroker, Recorder

from edgedl.samples import decode_sample, samples_topic
from edgedl.telemetry import status_topic, telemetry_topic

pytestmark = pytest.mark.slow
EDGEDL = str(Path(sys.executable).with_name("edgedl"))

SAMPLING = """
[sampling]
rate = 1.0
max_per_hour = 30
class_quota = 4
"""


def export(db: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [EDGEDL, "collector", "export", "--db", f"sqlite:///{db}"]
    return subprocess.run([*command, *args, "--output", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_bounded_samples_reach_the_collector_export_and_train(
    digits: Any,
    digits_bundle: Callable[..., Path],
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    bundle = digits_bundle("tflite-int8")
    collector_process()
    db = tmp_path / "collector0.db"
    everything = Recorder(e2e_broker.url, ["#"])
    agents = {}
    for device, extra in (("pi-on", SAMPLING), ("pi-off", "")):
        folder = tmp_path / device
        folder.mkdir()
        (folder / "agent.toml").write_text(AGENT_TOML.format(spool=folder / "spool.db") + extra)
        agents[device] = agent_process(
            "--config", folder / "agent.toml", "--model", bundle, "--mqtt", e2e_broker.url,
            "--fleet", "factory-7", "--device", device, "--telemetry-interval", "0.5",
        )  # fmt: skip

    images = digit_images(400, start=0)
    truth = [int(t) for t in load_digits().target[:400]]
    for agent in agents.values():
        with agent.client() as client:
            answers = [client.predict("digits", images[i : i + 4]) for i in range(0, 400, 4)]
            result = client.labels(
                [(a.id or "", truth[4 * k : 4 * k + 4]) for k, a in enumerate(answers)]
            )
            assert result["counts"]["accepted"] == 100

    def on_broker(kind: str) -> list[Any]:
        topic = samples_topic("factory-7", "pi-on")
        return [decode_sample(m.payload) for m in list(everything.messages) if m.topic == topic
                if decode_sample(m.payload).kind == kind]  # fmt: skip

    wait_until(lambda: len(on_broker("label")) >= 30, 60, "30 sample labels on the broker")
    sent = on_broker("sample")
    # The bounds held under the burst: 30 an hour, at most 4 per predicted class.
    assert len({s.id for s in sent}) == 30
    assert max(Counter(s.predicted for s in sent).values()) <= 4
    assert {s.reason for s in sent} == {"rate"}
    metrics = httpx.get(f"{agents['pi-on'].url}/metrics", timeout=10).text
    assert 'edgedl_samples_total{outcome="written"} 30.0' in metrics
    assert 'edgedl_samples_total{outcome="offered"} 400.0' in metrics

    out = tmp_path / "data.npz"

    def exported() -> int:
        done = export(db, out, "--fleet", "factory-7", "--labelled")
        return int(np.load(out)["x"].shape[0]) if done.returncode == 0 else 0

    wait_until(lambda: exported() == 30, 60, "30 labelled samples in the collector")
    data = np.load(out)
    assert data["x"].shape == (30, 8, 8, 1) and data["y"].shape == (30,)
    assert set(data["device"]) == {"pi-on"} and len(set(data["sample_id"])) == 30
    # Each sample is the real input its request carried, with that input's true label.
    for x, y in zip(data["x"], data["y"], strict=True):
        matches = [i for i in range(400) if np.array_equal(images[i], x)]
        assert matches and y in {truth[i] for i in matches}

    # The dataset trains: a classifier fitted on the 30 samples recognises unseen digits.
    held_out = load_digits()
    clf = LogisticRegression(max_iter=2000).fit(data["x"].reshape(30, -1), data["y"])
    unseen = (held_out.images[1000:1400] / 16.0).reshape(400, -1)
    accuracy = float((clf.predict(unseen) == held_out.target[1000:1400]).mean())
    assert accuracy > 0.5, accuracy  # chance is 0.1

    # convert takes it as calibration data.
    from edgedl.converters import ConvertOptions, convert

    converted = convert(
        digits.model,
        ConvertOptions(target="tflite-int8", calibration=out, validation=digits.test,
                       output=tmp_path / "retrained"),
    )  # fmt: skip
    assert (tmp_path / "retrained" / "manifest.json").is_file() and converted is not None

    # Nothing matches: one clear line, non-zero exit.
    none = export(db, tmp_path / "none.npz", "--device", "nobody")
    assert none.returncode != 0 and "no stored samples match device nobody" in none.stderr
    assert "Traceback" not in none.stderr

    # With sampling off, nothing but windows and statuses left pi-off.
    off_topics = {m.topic for m in list(everything.messages) if "/pi-off/" in m.topic}
    assert off_topics == {
        telemetry_topic("factory-7", "pi-off"),
        status_topic("factory-7", "pi-off"),
    }
    everything.close()
