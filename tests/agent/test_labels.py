"""Late labels on the agent: every answer has an id, labels match it, and the window counts them.

The prediction log is exercised with a clock the test moves (expiry by age), and through a
real in-process agent serving the digits bundle: ids come back on every answer, labels sent
out of order, twice, for unknown, forgotten and malformed ids each get their own answer, and
the telemetry window's confusion matrix is what the labelled requests say it must be.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import AgentProcess, serve_in_process
from tests.agent.serving_helpers import digit_images

from edgedl.agent.config import AgentConfig, ModelConfig
from edgedl.agent.labels import LabelStatus, PredictionLog
from edgedl.agent.telemetry.window import WindowBuilder
from edgedl.errors import ServingError
from edgedl.telemetry import decode_window, encode_window


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_each_kind_of_label_is_counted_or_refused_with_its_reason() -> None:
    clock = Clock()
    served = {("digits", "2")}
    log = PredictionLog(
        max_predictions=3, max_age_s=60.0, is_served=lambda m, v: (m, v) in served, clock=clock
    )
    builder = WindowBuilder("f", "d")
    log.add_listener(builder)
    log.record("a", "digits", "1", [3], classes=10)  # version 1, replaced by 2 below
    log.record("b", "digits", "2", [4, 5], classes=10)
    log.record("c", "digits", "2", [6], classes=10)

    # Out of order: c before a; a's version is no longer served but still counts toward it.
    assert log.label("c", 6).status is LabelStatus.ACCEPTED
    late = log.label("a", 8)
    assert (late.status, late.version, late.replaced) == (LabelStatus.ACCEPTED, "1", True)
    assert "no longer serves" in late.message
    dup = log.label("c", 1)
    assert dup.status is LabelStatus.DUPLICATE and "already has its label" in dup.message
    assert log.label("zzz", 1).status is LabelStatus.UNKNOWN
    wrong_length = log.label("b", 4)
    assert wrong_length.status is LabelStatus.INVALID and "2 samples" in wrong_length.message
    assert log.label("b", [4, 99]).status is LabelStatus.INVALID  # not a class of 10
    assert log.label("b", [4, True]).status is LabelStatus.INVALID
    assert log.label(17, 4).status is LabelStatus.INVALID
    # The invalid attempts did not use up b's label.
    assert log.label("b", [4, 1]).status is LabelStatus.ACCEPTED

    # Pushed out by newer predictions: expired, with the bound in the message.
    for i in range(3):
        log.record(f"new-{i}", "digits", "2", [0], classes=10)
    pushed = log.label("c", 6)
    assert pushed.status is LabelStatus.EXPIRED and "last 3" in pushed.message
    # Too old: expired as well.
    clock.now += 61.0
    assert log.label("new-0", 0).status is LabelStatus.EXPIRED

    window = decode_window(encode_window(builder.cut(seq=0))[0])
    assert window.schema_version == 2 and window.labels is not None
    counts = window.labels.model_dump()
    assert counts == {
        "received": 11,
        "matched": 3,
        "duplicate": 1,
        "unknown": 1,
        "expired": 2,
        "invalid": 4,
        "replaced": 1,
    }
    by_version = {m.version: m.labels for m in window.models}
    assert by_version["1"] is not None and by_version["1"].confusion == [(8, 3, 1)]
    assert by_version["2"] is not None
    assert sorted(by_version["2"].confusion) == [(1, 5, 1), (4, 4, 1), (6, 6, 1)]


def test_a_window_without_labels_stays_schema_version_1() -> None:
    builder = WindowBuilder("f", "d")
    window = builder.cut(seq=0)
    assert window.schema_version == 1 and window.labels is None


@pytest.mark.slow
def test_agent_answers_ids_and_the_window_holds_the_labelled_confusion(digits_bundle: Any) -> None:
    config = AgentConfig(models=[ModelConfig(path=str(digits_bundle("tflite-int8")))])
    images = digit_images(40)
    truth = _digit_labels(40)
    with serve_in_process(config) as agent:
        builder = WindowBuilder("f", "d")
        agent.runtime.add_observer(builder)
        agent.runtime.predictions.add_listener(builder)
        with agent.client() as client:
            answers = [client.predict("digits", images[i : i + 1]) for i in range(30)]
            own = client.predict("digits", images[30:34], request_id="batch-of-4")
            assert own.id == "batch-of-4"
            ids = [a.id for a in answers]
            assert all(ids) and len(set(ids)) == 30  # the agent made one per answer
            predicted = [int(np.argmax(a.outputs["output_0"])) for a in answers]
            # Labels for 20 of them, newest first (out of order), in one batch.
            labelled = list(range(29, 9, -1))
            result = client.labels([(ids[i], int(truth[i])) for i in labelled])
            assert result["counts"]["accepted"] == 20
            batch_pred = np.argmax(own.outputs["output_0"], axis=1).tolist()
            assert (
                client.label("batch-of-4", [int(t) for t in truth[30:34]])["status"] == "accepted"
            )
            with pytest.raises(ServingError) as dup:
                client.label(ids[29], int(truth[29]))
            assert dup.value.status == 409
            with pytest.raises(ServingError) as unknown:
                client.label("never-answered", 1)
            assert unknown.value.status == 404 and "no prediction" in str(unknown.value)
            with pytest.raises(ServingError) as bad:
                client.label(ids[0], 10)
            assert bad.value.status == 400 and "class index" in str(bad.value)
        raw = httpx.post(f"{agent.url}/v2/labels", content=b"{not json")
        assert raw.status_code == 400 and "malformed JSON" in raw.json()["error"]
        window = builder.cut(seq=0)

    (model,) = window.models
    assert model.labels is not None
    expected = Counter((int(truth[i]), predicted[i]) for i in labelled)
    expected.update(zip((int(t) for t in truth[30:34]), batch_pred, strict=True))
    assert Counter({(a, p): c for a, p, c in model.labels.confusion}) == expected
    assert window.labels is not None and window.labels.matched == 21
    assert (window.labels.duplicate, window.labels.unknown, window.labels.invalid) == (1, 1, 1)


def _digit_labels(n: int) -> np.ndarray[Any, Any]:
    from sklearn.datasets import load_digits

    return load_digits().target[:n]


@pytest.mark.slow
def test_grpc_answers_carry_ids_that_take_labels(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess]
) -> None:
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    from tests.agent.test_grpc import grpc_agent, pixels

    agent, address = grpc_agent(agent_process, digits_bundle("tflite-int8"))
    client = tritonclient_grpc.InferenceServerClient(address)
    try:
        x = digit_images(2)
        made = client.infer("digits", [pixels(x)]).get_response().id
        given = client.infer("digits", [pixels(x[:1])], request_id="g-1").get_response().id
    finally:
        client.close()
    assert made and given == "g-1"
    with agent.client() as http:
        assert http.label(made, [0, 1])["status"] == "accepted"
        assert http.label("g-1", 0)["status"] == "accepted"
