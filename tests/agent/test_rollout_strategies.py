"""Rollout strategies in process, on real served models (LiteRT and ONNX Runtime, real batchers).

Requests go the way the HTTP layer sends them (``repository.resolve(name).submit(...)``), so
these tests see which version answered each request, as a client would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent import rollout_fixtures
from tests.agent.conftest import make_onnx_bundle
from tests.agent.rollout_fixtures import as_version, digits_samples, tamper

from edgedl import runtime as edgedl_runtime
from edgedl.agent.config import AgentConfig, ModelConfig
from edgedl.agent.rollout.config import DeployOptions, RolloutConfig, StoreConfig
from edgedl.agent.rollout.rollouts import Rollouts
from edgedl.agent.rollout.store import ModelStore
from edgedl.agent.service import AgentRuntime
from edgedl.errors import BundleError, EdgeDLError, RolloutError

failing_digits = rollout_fixtures.failing_digits
slow_digits = rollout_fixtures.slow_digits

X = digits_samples(40)


@dataclass
class Reply:
    version: str
    output: np.ndarray | None = None
    error: BaseException | None = None


@dataclass
class Device:
    """An agent runtime with rollouts, as ``edgedl agent serve`` sets it up, minus HTTP."""

    runtime: AgentRuntime
    rollouts: Rollouts
    replies: list[Reply] = field(default_factory=list)

    def ask(self, x: np.ndarray) -> Reply:
        servable = self.runtime.repository.resolve("digits")
        started = time.perf_counter()
        try:
            out = servable.submit({"pixels": x}).result(timeout=60)
        except Exception as exc:
            servable.finish(started, exc)
            reply = Reply(servable.version, error=exc)
        else:
            servable.finish(started, None)
            reply = Reply(servable.version, output=out["output_0"])
        self.replies.append(reply)
        return reply

    def status(self) -> dict[str, Any]:
        return self.rollouts.status()["models"]["digits"]

    def ask_until(self, done: Callable[[], bool], limit: int = 300) -> list[Reply]:
        """Send requests (cycling through real digits) until ``done()``; return the replies."""
        replies = []
        for i in range(limit):
            if done():
                break
            replies.append(self.ask(X[i % len(X)][None]))
        assert done(), f"not done after {limit} requests: {self.status()}"
        self.rollouts.wait_idle()
        return replies

    def rollout_ended(self) -> bool:
        return self.rollouts.rollout("digits") is None

    def last_event(self) -> dict[str, Any]:
        return self.status()["history"][-1]

    def loaded_versions(self) -> list[str]:
        return self.runtime.repository.versions("digits")


def start_device(store: Path, models: list[Path], shadow_max_pending: int = 1000) -> Device:
    config = AgentConfig(
        models=[ModelConfig(path=str(m)) for m in models],
        store=StoreConfig(path=str(store)),
        # By default no shadow copy is ever skipped, so the comparisons below are exact.
        rollout=RolloutConfig(shadow_max_pending=shadow_max_pending),
    )
    runtime = AgentRuntime(config)
    runtime.start()
    rollouts = Rollouts(
        ModelStore(store, keep=config.store.keep),
        runtime.repository,
        runtime.load_model,
        config.rollout,
    )
    runtime.add_component(rollouts)  # the runtime runs: started at once, as in `agent serve`
    return Device(runtime, rollouts)


@pytest.fixture
def v1(digits_bundle) -> Path:  # type: ignore[no-untyped-def]
    return Path(digits_bundle("tflite-int8", version="1"))


@pytest.fixture
def v2(digits_bundle) -> Path:  # type: ignore[no-untyped-def]
    return Path(digits_bundle("onnx-fp32", version="2"))


@pytest.fixture
def device(tmp_path: Path, v1: Path) -> Iterator[Device]:
    d = start_device(tmp_path / "store", [v1])
    yield d
    d.runtime.stop(timeout=30)


def direct(bundle: Path, x: np.ndarray) -> np.ndarray:
    """The bundle's output for ``x`` run straight through the runtime, one sample at a time."""
    runner = edgedl_runtime.load(bundle)
    return np.concatenate([runner.predict(x[i : i + 1]) for i in range(len(x))])


def options(**kwargs: Any) -> DeployOptions:
    return DeployOptions.model_validate(kwargs)


# -- canary ------------------------------------------------------------------------------


def test_canary_splits_traffic_then_promotes_after_n_good_requests(
    device: Device, v1: Path, v2: Path
) -> None:
    started = device.rollouts.deploy(v2, options(strategy="canary", share=0.5, promote_after=20))
    assert started["rollout"]["strategy"] == "canary"
    assert device.status()["serving"] == "1"

    replies = device.ask_until(device.rollout_ended)

    by_version = {r.version for r in replies}
    assert by_version == {"1", "2"}, "both versions answered part of the traffic"
    assert all(r.error is None for r in replies)
    for r, x in zip(replies, X, strict=False):  # each answer is really that version's
        expected = direct(v2 if r.version == "2" else v1, x[None])
        np.testing.assert_allclose(r.output, expected, atol=1e-5)
    event = device.last_event()
    assert event["action"] == "promoted"
    assert "20 good requests" in event["reason"]
    assert device.status()["previous"] == "1"
    assert device.loaded_versions() == ["2"], "the old version is released after promotion"
    assert {device.ask(X[0][None]).version for _ in range(10)} == {"2"}


def test_canary_rolls_back_a_candidate_that_fails_for_real(
    device: Device, failing_digits: Path
) -> None:
    device.rollouts.deploy(
        failing_digits,
        options(strategy="canary", share=0.5, max_error_rate=0.2, min_requests=3, promote_after=50),
    )
    replies = device.ask_until(device.rollout_ended)

    failed = [r for r in replies if r.error is not None]
    assert failed and {r.version for r in failed} == {"failing"}
    assert "failed" in str(failed[0].error)  # the client got the model's error (a 500)
    event = device.last_event()
    assert event["action"] == "rolled_back"
    assert "error rate" in event["reason"]
    status = device.status()
    assert (status["serving"], status["current"]) == ("1", "1")
    assert device.loaded_versions() == ["1"]
    after = [device.ask(x[None]) for x in X[:20]]
    assert all(r.version == "1" and r.error is None for r in after)


# -- bluegreen ---------------------------------------------------------------------------


def test_bluegreen_switches_all_traffic_keeps_the_old_warm_then_promotes(
    device: Device, v2: Path
) -> None:
    device.rollouts.deploy(v2, options(strategy="bluegreen", probation_requests=10))
    first = device.ask(X[0][None])
    assert first.version == "2"
    assert sorted(device.loaded_versions()) == ["1", "2"], "the old version stays loaded"
    assert device.status()["current"] == "1", "not promoted during probation"

    replies = [first, *device.ask_until(device.rollout_ended)]

    assert len(replies) == 10 and {r.version for r in replies} == {"2"}
    event = device.last_event()
    assert event["action"] == "promoted"
    assert "probation of 10 requests passed" in event["reason"]
    assert device.loaded_versions() == ["2"]


def test_bluegreen_rolls_back_a_slow_candidate_on_its_p95(
    device: Device, slow_digits: Path
) -> None:
    runner = edgedl_runtime.load(slow_digits)
    fastest_ms = min(
        _timed(lambda: runner.predict(X[:1])) for _ in range(3)
    )  # this machine's speed, so the bound is tight here and anywhere
    bound = fastest_ms / 4
    device.rollouts.deploy(
        slow_digits,
        options(strategy="bluegreen", max_p95_ms=bound, min_requests=3, probation_requests=100),
    )
    replies = device.ask_until(device.rollout_ended, limit=20)

    assert [r.version for r in replies] == ["slow"] * 3, "judged after min_requests"
    assert all(r.error is None for r in replies), "slow, but every request was answered"
    event = device.last_event()
    assert event["action"] == "rolled_back"
    assert "p95 latency" in event["reason"]
    assert device.status()["serving"] == "1"
    assert device.ask(X[0][None]).version == "1"


def test_bluegreen_rolls_back_a_failing_candidate(device: Device, failing_digits: Path) -> None:
    device.rollouts.deploy(
        failing_digits, options(strategy="bluegreen", max_error_rate=0.0, min_requests=2)
    )
    replies = device.ask_until(device.rollout_ended, limit=10)
    assert [r.version for r in replies] == ["failing", "failing"]
    assert "error rate 100.0%" in device.last_event()["reason"]
    assert device.ask(X[0][None]).version == "1"


def test_bluegreen_probation_by_time_ends_even_without_traffic(device: Device, v2: Path) -> None:
    device.rollouts.deploy(
        v2, options(strategy="bluegreen", probation_requests=None, probation_s=0.5)
    )
    assert device.ask(X[0][None]).version == "2"
    deadline = time.monotonic() + 20
    while device.rollouts.store.current("digits") != "2" and time.monotonic() < deadline:
        time.sleep(0.1)  # no requests: the rollout thread ends the probation
    device.rollouts.wait_idle()
    event = device.last_event()
    assert event["action"] == "promoted"
    assert "probation of 0.5 s passed" in event["reason"]


def test_rollback_command_goes_back_to_the_previous_version(device: Device, v2: Path) -> None:
    device.rollouts.deploy(v2, options(strategy="bluegreen", probation_requests=1))
    device.ask_until(device.rollout_ended)
    result = device.rollouts.rollback()
    assert result["serving"] == "1"
    status = device.status()
    assert (status["serving"], status["current"], status["previous"]) == ("1", "1", "2")
    assert device.ask(X[0][None]).version == "1"
    assert device.loaded_versions() == ["1"]
    # and forward again: the previous is now version 2
    assert device.rollouts.rollback()["serving"] == "2"


# -- shadow ------------------------------------------------------------------------------


def test_shadow_compares_outputs_and_never_returns_the_candidates(
    device: Device, v1: Path, v2: Path
) -> None:
    device.rollouts.deploy(v2, options(strategy="shadow"))
    x = X[:30]
    replies = [device.ask(x[i : i + 1]) for i in range(len(x))]

    assert {r.version for r in replies} == {"1"}
    live = np.concatenate([r.output for r in replies if r.output is not None])
    np.testing.assert_allclose(live, direct(v1, x), atol=1e-6)  # clients got the live answers

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shadow = device.status()["rollout"]["shadow"]
        if shadow["compared_requests"] == len(x):
            break
        time.sleep(0.05)
    candidate = direct(v2, x)
    expected_agreement = float(np.mean(live.argmax(1) == candidate.argmax(1)))
    assert shadow["compared_requests"] == len(x)
    assert shadow["top1_agreement"] == pytest.approx(expected_agreement, abs=1e-6)
    assert shadow["max_abs_diff"] == pytest.approx(float(np.abs(live - candidate).max()), rel=1e-4)
    assert device.status()["rollout"]["candidate_health"]["requests"] == len(x)
    assert device.status()["current"] == "1", "a shadow is never promoted by itself"

    result = device.rollouts.promote()
    assert result["serving"] == "2"
    event = device.last_event()
    assert event["action"] == "promoted" and event["reason"] == "promoted by command"
    assert event["shadow"]["compared_requests"] == len(x)
    assert device.ask(x[:1]).version == "2"


def test_shadow_candidate_failures_are_recorded_but_never_seen(
    device: Device, failing_digits: Path
) -> None:
    device.rollouts.deploy(failing_digits, options(strategy="shadow"))
    replies = [device.ask(x[None]) for x in X[:10]]
    assert all(r.version == "1" and r.error is None for r in replies)
    deadline = time.monotonic() + 30
    while device.status()["rollout"]["shadow"]["candidate_errors"] < 10:
        assert time.monotonic() < deadline, device.status()["rollout"]
        time.sleep(0.05)
    device.rollouts.rollback()
    event = device.last_event()
    assert (event["action"], event["version"]) == ("rolled_back", "failing")
    assert device.loaded_versions() == ["1"]


def test_a_shadow_that_cannot_keep_up_skips_copies_instead_of_queueing(
    tmp_path: Path, v1: Path, slow_digits: Path
) -> None:
    device = start_device(tmp_path / "store", [v1], shadow_max_pending=2)
    try:
        device.rollouts.deploy(slow_digits, options(strategy="shadow"))
        pair = device.runtime.repository.resolve("digits")
        futures = [pair.submit({"pixels": x[None]}) for x in X[:20]]  # a burst
        answers = [f.result(timeout=60) for f in futures]
        assert len(answers) == 20 and pair.version == "1"

        def accounted() -> int:
            shadow = device.status()["rollout"]["shadow"]
            return int(shadow["compared_requests"] + shadow["skipped"])

        deadline = time.monotonic() + 60
        while accounted() < 20:
            assert time.monotonic() < deadline, device.status()["rollout"]
            time.sleep(0.05)
        shadow = device.status()["rollout"]["shadow"]
        # Two slow copies in flight at most: most of a burst is skipped, none is lost track of.
        assert shadow["skipped"] >= 1 and shadow["compared_requests"] >= 2
        assert shadow["skipped"] + shadow["compared_requests"] == 20
    finally:
        device.runtime.stop(timeout=30)


def test_the_first_version_of_a_model_is_activated_at_once(tmp_path: Path, v1: Path) -> None:
    device = start_device(tmp_path / "store", [])
    try:
        result = device.rollouts.deploy(v1, options(strategy="canary"))
        assert (result["serving"], result["event"]["action"]) == ("1", "activated")
        assert device.ask(X[0][None]).version == "1"
        assert device.status()["current"] == "1"
    finally:
        device.runtime.stop(timeout=30)


# -- refusals ----------------------------------------------------------------------------


def test_refused_deployments_leave_the_current_version_serving(
    device: Device, v2: Path, tmp_path: Path
) -> None:
    tampered = as_version(v2, tmp_path, "3")
    tamper(tampered / "model.onnx")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        device.rollouts.deploy(tampered)

    garbage = as_version(v2, tmp_path, "4")
    _rewrite_model(garbage, b"this is not an ONNX model")
    with pytest.raises(EdgeDLError, match=r"ONNX Runtime cannot load|cannot be loaded"):
        device.rollouts.deploy(garbage)
    assert device.last_event()["action"] == "refused"
    assert not device.rollouts.store.has("digits", "4"), "a version that never served is not kept"

    other_inputs = as_version(
        make_onnx_bundle(tmp_path, "digits", [_identity()], [], "n"), tmp_path / "o", "5"
    )
    with pytest.raises(RolloutError, match="other inputs"):
        device.rollouts.deploy(other_inputs)

    device.rollouts.deploy(v2, options(strategy="canary", promote_after=100))
    with pytest.raises(RolloutError, match="in progress"):
        device.rollouts.deploy(as_version(v2, tmp_path / "again", "6"))

    status = device.status()
    assert (status["serving"], status["current"]) == ("1", "1")
    assert status["rollout"]["candidate"] == "2"
    assert device.loaded_versions() == ["1", "2"]  # the refused ones were never kept loaded
    assert device.ask(X[0][None]).error is None


# -- restarts ----------------------------------------------------------------------------


def test_a_restart_comes_back_to_the_promoted_version(
    device: Device, v1: Path, v2: Path, tmp_path: Path
) -> None:
    device.rollouts.deploy(v2, options(strategy="bluegreen", probation_requests=2))
    device.ask_until(device.rollout_ended)
    device.rollouts.deploy(as_version(v1, tmp_path, "3"), options(strategy="canary"))
    device.runtime.stop(timeout=30)  # the agent stops in the middle of the canary

    again = start_device(tmp_path / "store", [v1])  # agent.toml still names version 1
    try:
        status = again.status()
        assert (status["serving"], status["current"], status["rollout"]) == ("2", "2", None)
        assert status["history"][-1]["action"] == "abandoned"
        assert again.loaded_versions() == ["2"]
        assert again.ask(X[0][None]).version == "2"
    finally:
        again.runtime.stop(timeout=30)


def test_a_rotten_active_version_falls_back_to_the_previous_at_start(
    device: Device, v2: Path, tmp_path: Path
) -> None:
    device.rollouts.deploy(v2, options(strategy="bluegreen", probation_requests=1))
    device.ask_until(device.rollout_ended)
    device.runtime.stop(timeout=30)
    tamper(tmp_path / "store" / "digits" / "2" / "model.onnx")

    again = start_device(tmp_path / "store", [])  # serving only what the store holds
    try:
        status = again.status()
        assert (status["serving"], status["current"]) == ("1", "1")
        assert status["history"][-1]["action"] == "rolled_back"
        assert "sha256 mismatch" in status["history"][-1]["reason"]
        assert again.ask(X[0][None]).error is None
    finally:
        again.runtime.stop(timeout=30)


def _timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000


def _identity() -> Any:
    from onnx import helper

    return helper.make_node("Identity", ["x"], ["y"])


def _rewrite_model(bundle: Path, data: bytes) -> None:
    import json

    from edgedl.bundle import MANIFEST_FILE, sha256_file

    (bundle / "model.onnx").write_bytes(data)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest.update(sha256=sha256_file(bundle / "model.onnx"), size_bytes=len(data))
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
