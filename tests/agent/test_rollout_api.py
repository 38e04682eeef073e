"""The admin API and ``edgedl agent deploy | promote | rollback | status`` against a running agent.

Every test starts ``edgedl agent serve`` as a subprocess with a store in a temporary folder
and talks to it over real HTTP, with httpx or with the installed CLI.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent import rollout_fixtures
from tests.agent.conftest import AgentProcess
from tests.agent.rollout_fixtures import as_version, digits_samples, tamper
from tests.conftest import run_edgedl

from edgedl import runtime as edgedl_runtime

failing_digits = rollout_fixtures.failing_digits

pytestmark = pytest.mark.slow

TOKEN = "correct horse battery staple"
X = digits_samples(20)


@pytest.fixture
def v1(digits_bundle) -> Path:  # type: ignore[no-untyped-def]
    return Path(digits_bundle("tflite-int8", version="1"))


@pytest.fixture
def v2(digits_bundle) -> Path:  # type: ignore[no-untyped-def]
    return Path(digits_bundle("onnx-fp32", version="2"))


@pytest.fixture
def agent_toml(tmp_path: Path, v1: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[server]\nadmin_token = "{TOKEN}"\n\n'
        f'[[models]]\npath = "{v1}"\n\n'
        f'[store]\npath = "{tmp_path / "store"}"\n'
    )
    return path


@pytest.fixture
def agent(agent_process: Callable[..., AgentProcess], agent_toml: Path) -> AgentProcess:
    return agent_process("--config", agent_toml)


def admin(agent: AgentProcess, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=f"{agent.url}/v2/admin", headers=headers, timeout=60)


def infer(agent: AgentProcess, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "pixels",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    return httpx.post(f"{agent.url}/v2/models/digits/infer", json=body, timeout=60)


def answered_by(agent: AgentProcess, x: np.ndarray) -> str:
    response = infer(agent, x)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def cli(agent: AgentProcess, *args: str | Path) -> Any:
    return run_edgedl("agent", *args, "--agent", agent.url, "--token", TOKEN)


def status(agent: AgentProcess) -> dict[str, Any]:
    with admin(agent) as client:
        return dict(client.get("/status").json()["models"]["digits"])


# -- the token ---------------------------------------------------------------------------


def test_admin_api_refuses_a_missing_or_wrong_token_and_never_logs_it(
    agent: AgentProcess, v2: Path
) -> None:
    for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
        with admin(agent, token) as client:
            assert client.get("/status").status_code == 401
            refused = client.post("/deploy", json={"bundle": str(v2)})
            assert refused.status_code == 401
            assert "admin token" in refused.json()["error"]
            assert client.post("/rollback", json={}).status_code == 401
    assert answered_by(agent, X[:1]) == "1", "nothing was deployed"
    with admin(agent) as client:
        assert client.get("/status").status_code == 200
    assert TOKEN not in agent.output


def test_without_a_token_the_admin_api_is_off_and_the_store_untouched(
    agent_process: Callable[..., AgentProcess], v1: Path, tmp_path: Path
) -> None:
    config = tmp_path / "no-token.toml"
    config.write_text(f'[[models]]\npath = "{v1}"\n[store]\npath = "{tmp_path / "s"}"\n')
    agent = agent_process("--config", config)
    with admin(agent, "anything") as client:
        answer = client.get("/status")
    assert answer.status_code == 403
    assert "admin_token" in answer.json()["error"]
    assert not (tmp_path / "s").exists()


# -- deploy, rollback, promote from the command line -------------------------------------


def test_cli_deploys_a_canary_and_rolls_it_back(agent: AgentProcess, v2: Path) -> None:
    started = cli(
        agent, "deploy", v2, "--strategy", "canary", "--share", "0.5", "--promote-after", "500"
    )
    assert started.code == 0, started.stderr
    assert "canary rollout of digits 2 started (live: 1)" in started.stdout

    versions = {answered_by(agent, X[i % len(X)][None]) for i in range(40)}
    assert versions == {"1", "2"}

    shown = cli(agent, "status", "--json")
    assert shown.code == 0, shown.stderr
    rollout = json.loads(shown.stdout)["models"]["digits"]["rollout"]
    assert (rollout["strategy"], rollout["candidate"], rollout["live"]) == ("canary", "2", "1")
    assert rollout["candidate_health"]["requests"] >= 1

    back = cli(agent, "rollback")
    assert back.code == 0, back.stderr
    assert "rolled back 2 (rolled back by command); serving 1" in back.stdout
    assert {answered_by(agent, x[None]) for x in X} == {"1"}
    readable = cli(agent, "status")
    assert "digits: serving 1" in readable.stdout
    store = Path(json.loads(shown.stdout)["store"])
    for scratch in (".uploads", ".unpacking"):  # the uploaded .tar left nothing behind
        assert list((store / scratch).iterdir()) == []


def test_cli_shadow_never_returns_the_candidates_answers_until_promoted(
    agent: AgentProcess, v1: Path, v2: Path
) -> None:
    assert cli(agent, "deploy", v2, "--strategy", "shadow").code == 0
    expected = edgedl_runtime.load(v1)
    for x in X[:10]:
        response = infer(agent, x[None])
        assert response.json()["model_version"] == "1"
        got = np.array(response.json()["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, expected.predict(x[None]).ravel(), atol=1e-6)
    promoted = cli(agent, "promote", "--json")
    assert promoted.code == 0, promoted.stderr
    result = json.loads(promoted.stdout)
    assert result["serving"] == "2"
    assert result["event"]["shadow"]["compared_requests"] >= 1
    assert result["event"]["shadow"]["top1_agreement"] is not None
    assert answered_by(agent, X[:1]) == "2"


def test_a_bluegreen_candidate_that_fails_is_rolled_back_automatically(
    agent: AgentProcess, failing_digits: Path
) -> None:
    with admin(agent) as client:
        started = client.post(
            "/deploy",
            json={
                "bundle": str(failing_digits),
                "strategy": "bluegreen",
                "min_requests": 2,
                "max_error_rate": 0.0,
            },
        )
    assert started.status_code == 200, started.text
    answers = [infer(agent, x[None]) for x in X[:6]]
    assert [a.status_code for a in answers[:2]] == [500, 500]
    assert "failing" in answers[0].json()["error"]
    assert [a.json()["model_version"] for a in answers[2:]] == ["1"] * 4
    event = status(agent)["history"][-1]
    assert event["action"] == "rolled_back" and "error rate" in event["reason"]


# -- refused bundles ---------------------------------------------------------------------


def test_a_tampered_bundle_is_refused_and_version_1_keeps_serving(
    agent: AgentProcess, v2: Path, tmp_path: Path
) -> None:
    bad = as_version(v2, tmp_path, "3")
    tamper(bad / "model.onnx")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(bad, arcname="digits-v3")
    with admin(agent) as client:
        uploaded = client.post(
            "/deploy?strategy=bluegreen",
            content=buffer.getvalue(),
            headers={"Content-Type": "application/x-tar"},
        )
    assert uploaded.status_code == 422
    assert "sha256 mismatch" in uploaded.json()["error"]

    by_path = run_edgedl(
        "agent", "deploy", bad, "--no-upload", "--agent", agent.url, "--token", TOKEN
    )
    assert by_path.code == 1
    assert "sha256 mismatch" in by_path.last_error_line and "Traceback" not in by_path.stderr

    assert answered_by(agent, X[:1]) == "1"
    assert status(agent)["rollout"] is None
    assert not (tmp_path / "store" / "digits" / "3").exists()


def test_bad_options_and_an_unreachable_agent_get_one_clear_line(
    agent: AgentProcess, v2: Path
) -> None:
    with admin(agent) as client:
        share = client.post("/deploy", json={"bundle": str(v2), "strategy": "canary", "share": 2})
        unknown = client.post("/deploy", json={"bundle": str(v2), "sharre": 0.1})
        missing = client.post("/deploy", json={"strategy": "canary"})
        nothing = client.post("/rollback", json={})
    assert share.status_code == 400 and share.json()["error"].startswith("share:")
    assert unknown.status_code == 400 and "sharre" in unknown.json()["error"]
    assert missing.status_code == 400 and '"bundle"' in missing.json()["error"]
    assert nothing.status_code == 409 and "no previous version" in nothing.json()["error"]

    nobody = run_edgedl("agent", "rollback", "--agent", "http://127.0.0.1:9", "--token", TOKEN)
    assert nobody.code == 1
    assert "cannot reach the agent" in nobody.last_error_line
    no_token = run_edgedl("agent", "status", "--agent", agent.url)
    assert no_token.code != 0 and "admin token" in no_token.last_error_line


# -- restarts ----------------------------------------------------------------------------


def test_a_restarted_agent_serves_the_version_it_promoted(
    agent_process: Callable[..., AgentProcess], agent_toml: Path, v2: Path
) -> None:
    first = agent_process("--config", agent_toml)
    deployed = cli(first, "deploy", v2, "--strategy", "bluegreen", "--probation-requests", "3")
    assert deployed.code == 0, deployed.stderr
    assert [answered_by(first, x[None]) for x in X[:3]] == ["2", "2", "2"]
    assert status(first)["current"] == "2"
    assert first.terminate() == 0

    second = agent_process("--config", agent_toml)  # agent.toml still names version 1
    assert answered_by(second, X[:1]) == "2"
    shown = status(second)
    assert (shown["serving"], shown["current"], shown["previous"]) == ("2", "2", "1")
    assert [e["action"] for e in shown["history"]][-2:] == ["started", "promoted"]


def test_the_commands_find_the_agent_and_token_in_its_agent_toml(
    agent: AgentProcess, tmp_path: Path
) -> None:
    device_toml = tmp_path / "device.toml"  # what the device's own agent.toml would say
    device_toml.write_text(f'[server]\nport = {agent.port}\nadmin_token = "{TOKEN}"\n')
    shown = run_edgedl("agent", "status", "--config", device_toml, "--json")
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["models"]["digits"]["serving"] == "1"
