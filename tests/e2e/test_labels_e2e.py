"""Late labels end to end: agent -> Mosquitto -> collector, each a real process.

An application asks the agent about 100 real digits (60 of them inverted, which the model
gets mostly wrong), keeps the ids of the answers, and later sends the true labels of 80 of
them, shuffled, in batches, plus a duplicate and an unknown id. The collector's real accuracy,
precision, recall and F1 must equal what scikit-learn computes from those labelled requests,
the accuracy estimated from confidences must stand beside them, and with ``[alerts] accuracy_below`` set an accuracy alert opens for the device. A subscriber
to ``#`` on the broker sees that nothing but windows and statuses leaves the device: no id,
no label one by one, no input.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import start_agent, wait_until
from tests.mqtt_broker import MosquittoBroker, Recorder

from edgedl.telemetry import decode_window, decompress, status_topic, telemetry_topic

pytestmark = pytest.mark.slow


def test_real_accuracy_in_the_collector_equals_accuracy_of_the_labelled_requests(
    digits_bundle: Any,
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_digits

    bundle = digits_bundle("tflite-int8")
    config = tmp_path / "collector.toml"
    config.write_text("[alerts]\naccuracy_below = 0.8\naccuracy_min_labels = 20\n")
    collector = collector_process("--config", config, "--reference", bundle)
    everything = Recorder(e2e_broker.url, ["#"])
    agent = start_agent(agent_process, bundle, e2e_broker, tmp_path / "agent", "pi-7")

    images = digit_images(100, start=500)
    images[40:] = 1.0 - images[40:]  # inverted: a shift the model was never shown
    truth = [int(t) for t in load_digits().target[500:600]]
    with agent.client() as client:
        answers = [client.predict("digits", images[i : i + 1]) for i in range(100)]
        assert all(a.id for a in answers) and len({a.id for a in answers}) == 100
        predicted = [int(np.argmax(a.outputs["output_0"])) for a in answers]
        labelled = random.Random(7).sample(range(100), 80)  # out of order
        for start in range(0, 80, 20):
            chunk = labelled[start : start + 20]
            result = client.labels([(answers[i].id or "", truth[i]) for i in chunk])
            assert result["counts"]["accepted"] == 20
        again = client.labels([(answers[labelled[0]].id or "", truth[labelled[0]]), ("nope", 1)])
        assert again["counts"]["duplicate"] == 1 and again["counts"]["unknown"] == 1

    y_true = [truth[i] for i in labelled]
    y_pred = [predicted[i] for i in labelled]
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )

    def report() -> dict[str, Any]:
        return dict(collector.get("/api/v1/accuracy", fleet="factory-7", device="pi-7"))

    wait_until(lambda: report()["overall"]["labelled"] == 80, 60, "80 labels in the collector")
    overall = report()["overall"]
    assert overall["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    assert overall["correct"] == sum(t == p for t, p in zip(y_true, y_pred, strict=True))
    assert overall["precision"] == pytest.approx(precision, abs=1e-12)
    assert overall["recall"] == pytest.approx(recall, abs=1e-12)
    assert overall["f1"] == pytest.approx(f1, abs=1e-12)
    (version,) = report()["by_version"]
    assert (version["model"], version["version"], version["labelled"]) == ("digits", "1", 80)
    # Beside it, the accuracy estimated from the confidences of all 100 predictions, with the
    # calibration convert fitted on the validation set.
    wait_until(
        lambda: (report()["overall"]["estimated"] or {}).get("predictions") == 100,
        30,
        "an estimate over the 100 predictions",
    )
    estimated = report()["overall"]["estimated"]
    assert 0.0 <= estimated["low"] <= estimated["accuracy"] <= estimated["high"] <= 1.0

    def accuracy_alerts() -> list[dict[str, Any]]:
        return [a for a in collector.get("/api/v1/alerts") if a["kind"] == "accuracy"]

    assert overall["accuracy"] < 0.8
    wait_until(lambda: bool(accuracy_alerts()), 30, "an accuracy alert")
    scopes = {(a["scope"], a["device"]) for a in accuracy_alerts()}
    assert ("device", "pi-7") in scopes and ("fleet", None) in scopes

    # What left the device: telemetry windows and its status, nothing else; no window holds an
    # id, and every label is a count in a confusion cell.
    seen = [m for m in list(everything.messages) if "/pi-7/" in m.topic]
    device_topics = {m.topic for m in seen}
    assert device_topics == {
        telemetry_topic("factory-7", "pi-7"),
        status_topic("factory-7", "pi-7"),
    }
    windows = [decode_window(m.payload) for m in seen if m.topic.endswith("/telemetry")]
    text = b"".join(decompress(m.payload) for m in seen)
    assert not any(a.id and a.id.encode() in text for a in answers)
    cells = [c for w in windows for m in w.models if m.labels for c in m.labels.confusion]
    assert sum(c for _, _, c in cells) == 80
    assert all(w.samples is None for w in windows)
    everything.close()
