"""Late labels sent straight to the collector: counted once, with the agent's, in one accuracy.

A real collector (SQLite and PostgreSQL) takes windows over a real Mosquitto, as devices send
them, and labels over real HTTP through :class:`~edgedl.collector_client.CollectorClient`:
labels carrying their prediction, labels naming a stored sample, and labels for predictions
whose label the device also counted, before or after. ``/api/v1/accuracy`` must equal
scikit-learn's accuracy of every prediction labelled once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.metrics import accuracy_score
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)

from edgedl.collector.service import Collector
from edgedl.collector_client import CollectorClient, DirectLabel
from edgedl.errors import ServingError
from edgedl.samples import SampleMessage, SampleTensor, encode_sample, samples_topic
from edgedl.telemetry import (
    LabelCounts,
    ModelLabels,
    TelemetryWindow,
    encode_window,
    label_digest,
    telemetry_topic,
)

TOKEN = "a-token-of-sixteen-chars"


def agent_labelled(window: TelemetryWindow, labels: dict[str, tuple[int, int]]) -> TelemetryWindow:
    """The window as an agent sends it after matching ``labels`` (id -> (actual, predicted))."""
    cells: dict[tuple[int, int], int] = {}
    for pair in labels.values():
        cells[pair] = cells.get(pair, 0) + 1
    ml = ModelLabels(
        confusion=[(a, p, c) for (a, p), c in sorted(cells.items())],
        ids=[label_digest(i) for i in labels],
    )
    n = len(labels)
    return window.model_copy(
        update={
            "schema_version": 2,
            "models": [m.model_copy(update={"labels": ml}) for m in window.models],
            "labels": LabelCounts(received=n, matched=n),
        }
    )


@pytest.mark.slow
def test_labels_sent_to_the_collector_count_once_with_the_agents(
    broker: Broker,
    db_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    fleet, model, version = windows.fleet, windows.manifest.name, windows.manifest.version
    collector = start_collector(
        collector_config(broker, db_url, fleet, **{"http.admin_token": TOKEN})
    )
    url = f"{collector.url}/api/v1/accuracy?fleet={fleet}"

    def send(w: TelemetryWindow) -> None:
        publisher.publish(telemetry_topic(w.fleet, w.device), encode_window(w)[0])

    # The device reports, and has matched the labels of p-agent-1 and p-agent-2 itself.
    send(agent_labelled(windows.window("cam-a", 0), {"p-agent-1": (3, 3), "p-agent-2": (1, 2)}))
    wait_until(lambda: get_json(url)["overall"]["labelled"] == 2, what="the agent's labels")

    def label(i: str, actual: int, predicted: int) -> DirectLabel:
        return DirectLabel(fleet, "cam-a", i, actual, model, version, predicted)

    truth: dict[str, tuple[int, int]] = {"p-agent-1": (3, 3), "p-agent-2": (1, 2)}
    with CollectorClient(collector.url, token=TOKEN) as client:
        accepted = client.label(label("p-cloud-1", 4, 4))
        assert accepted["status"] == "accepted" and accepted["version"] == version
        truth["p-cloud-1"] = (4, 4)
        many = client.labels(
            [
                label("p-cloud-2", 5, 6),
                label("p-cloud-2", 5, 6),  # the same label twice in one request
                label("p-agent-1", 3, 3),  # already counted by the device
                DirectLabel(fleet, "cam-z", "p-9", 1, model, version, 1),
                DirectLabel(fleet, "cam-a", "p-9", 1, model, "no-such-version", 1),
                DirectLabel(fleet, "cam-a", "p-never-sampled", 1),
                DirectLabel(fleet, "cam-a", "p-9", 10_000, model, version, 1),
                DirectLabel(fleet, "cam-a", "p-9", [1, 2], model, version, 1),
            ]
        )
        truth["p-cloud-2"] = (5, 6)
        statuses = [r["status"] for r in many["results"]]
        assert statuses == ["accepted", "duplicate", "duplicate", "unknown", "unknown",
                            "unknown", "invalid", "invalid"]  # fmt: skip
        messages = [r["message"] for r in many["results"]]
        assert "already counted, sent through the collector" in messages[1]
        assert "already counted, sent through the device (agent)" in messages[2]
        assert "no device 'cam-z'" in messages[3]
        assert "no-such-version is neither registered nor reported" in messages[4]
        assert "no stored sample has this prediction id" in messages[5]
        assert many["counts"] == {"accepted": 1, "duplicate": 2, "unknown": 3, "invalid": 2}

        # A single label refused says why, with its HTTP status.
        with pytest.raises(ServingError) as refused:
            client.label(label("p-cloud-1", 4, 4))
        assert refused.value.status == 409
        with pytest.raises(ServingError) as unknown:
            client.label(DirectLabel(fleet, "cam-q", "p-1", 1, model, version, 1))
        assert unknown.value.status == 404 and "no device 'cam-q'" in str(unknown.value)

        # The label of p-late came here first; the device counts it later: once, as the device's.
        client.label(label("p-late", 7, 1))
        wait_until(lambda: get_json(url)["overall"]["labelled"] == 5, what="the collector's")
        send(agent_labelled(windows.window("cam-a", 1), {"p-late": (7, 1)}))
        truth["p-late"] = (7, 1)
        time.sleep(1.0)
        # Stored, and still counted once (the device's cell replaced the collector's).
        wait_until(
            lambda: len(collector.store.windows("cam-a", 10, fleet=fleet)) == 2, what="window 1"
        )
        assert get_json(url)["overall"]["labelled"] == 5

        # A label naming a sample the device sent: its prediction is the sample's.
        image = np.arange(64, dtype=np.float32).reshape(8, 8, 1) / 64
        sample = SampleMessage(
            id=f"{fleet}:cam-a:e:1", fleet=fleet, device="cam-a", model=model, version=version,
            time=time.time(), reason="rate", prediction_id="p-sampled", index=0, predicted=8,
            confidence=0.4, inputs={"x": SampleTensor.of(image)},
        )  # fmt: skip
        publisher.publish(samples_topic(fleet, "cam-a"), encode_sample(sample))

        def sampled() -> Any:
            try:
                return client.label(DirectLabel(fleet, "cam-a", "p-sampled", 9))
            except ServingError as exc:
                return None if exc.status == 404 else exc

        assert wait_until(sampled, what="the sample")["model"] == model
        truth["p-sampled"] = (9, 8)

    report = get_json(url)
    y_true = [a for a, _ in truth.values()]
    y_pred = [p for _, p in truth.values()]
    assert report["overall"]["labelled"] == len(truth) == 6
    assert report["overall"]["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    (by_device,) = report["by_device"]
    assert by_device["device"] == "cam-a" and by_device["labelled"] == 6
    (by_version,) = report["by_version"]
    assert (by_version["model"], by_version["version"]) == (model, version)
    # The sample has its label for export too.
    from edgedl.collector.samples import export_samples

    assert export_samples(collector.store, fleet=fleet, labelled_only=True).label.tolist() == [9]


def test_labels_api_refuses_without_the_token_and_malformed_bodies(
    broker: Broker,
    sqlite_url: str,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    open_collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    body = {"fleet": windows.fleet, "device": "cam-a", "id": "p", "label": 1}
    off = httpx.post(f"{open_collector.url}/api/v1/labels", json=body, timeout=10)
    assert off.status_code == 403 and "set [http] admin_token" in off.json()["error"]
    open_collector.stop()

    collector = start_collector(
        collector_config(broker, sqlite_url, windows.fleet, **{"http.admin_token": TOKEN})
    )
    api = f"{collector.url}/api/v1/labels"
    with pytest.raises(ServingError) as wrong:
        CollectorClient(collector.url, token="not-the-token-at-all").label(
            DirectLabel(windows.fleet, "cam-a", "p", 1)
        )
    assert wrong.value.status == 401
    auth = {"authorization": f"Bearer {TOKEN}"}
    cases: list[tuple[bytes, int, str]] = [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "expected {"),
        (b'{"labels": 3}', 400, '"labels" must be a list'),
        (b'{"fleet": "f", "device": "d", "label": 1}', 400, '"id" must be a non-empty string'),
        (b'{"fleet": "f", "device": "d", "id": "p", "label": "cat"}', 400, "class indexes"),
        (b'{"fleet": "f", "device": "d", "id": "p", "label": 1, "predicted": 2}', 400,
         'send the "model" and "version"'),
        (b'{"labels": [' + b"{}," * 1000 + b"{}]}", 413, "at most 1000 labels"),
    ]  # fmt: skip
    for content, status, why in cases:
        answer = httpx.post(api, content=content, headers=auth, timeout=10)
        text = answer.json().get("error") or answer.json().get("message")
        assert (answer.status_code, why in text) == (status, True), (content[:60], answer.text)
