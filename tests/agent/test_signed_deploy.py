"""An agent that trusts one signing key: signed versions deploy, everything else is refused.

The agent runs as ``edgedl agent serve`` with ``[security] trusted_keys`` and an admin token,
and is driven over real HTTP (and with ``edgedl agent deploy``). A refused bundle is answered
422 with the reason, and version 1 keeps serving.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from tests.agent.conftest import AgentProcess, make_onnx_bundle
from tests.agent.rollout_fixtures import as_version, digits_samples, tamper
from tests.conftest import run_edgedl

from edgedl.bundle import MANIFEST_FILE, Bundle, sha256_file
from edgedl.errors import ConfigError, SignatureError
from edgedl.signing import generate_keys, key_id, load_public_key, sign_bundle

TOKEN = "signed-deploy-token-8c41f2e07d"
X = digits_samples(10)

Keys = dict[str, tuple[Path, Path]]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return {name: generate_keys(name, tmp_path / "keys") for name in ("release", "stranger")}


@pytest.fixture
def versions(digits_bundle, tmp_path: Path) -> Callable[..., Path]:  # type: ignore[no-untyped-def]
    """``versions("3", key=...)``: a copy of the digits ONNX bundle as version 3, signed or not."""

    def make(version: str, key: Path | None = None, source: str = "onnx-fp32") -> Path:
        out = tmp_path / "bundles" / version
        out.mkdir(parents=True)
        bundle = as_version(Path(digits_bundle(source, version="2")), out, version)
        if key is not None:
            sign_bundle(bundle, key)
        return bundle

    return make


def write_toml(path: Path, v1: Path, trusted: list[Path], extra: str = "") -> Path:
    keys = ", ".join(f'"{k}"' for k in trusted)
    path.write_text(
        f'[server]\nadmin_token = "{TOKEN}"\nlog_level = "debug"\naccess_log = true\n\n'
        f'[[models]]\npath = "{v1}"\n\n'
        f'[store]\npath = "{path.parent / "store"}"\n\n'
        f"[security]\ntrusted_keys = [{keys}]\n{extra}"
    )
    return path


def admin(agent: AgentProcess) -> httpx.Client:
    return httpx.Client(
        base_url=f"{agent.url}/v2/admin",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )


def answered_by(agent: AgentProcess, x: np.ndarray) -> str:
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
    response = httpx.post(f"{agent.url}/v2/models/digits/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def status(agent: AgentProcess) -> dict[str, Any]:
    with admin(agent) as client:
        return dict(client.get("/status").json()["models"]["digits"])


def key_material(keys: Keys) -> list[str]:
    """Every way a key could leak into a log: PEM body lines, raw bytes in hex and base64."""
    found: list[str] = []
    for private, public in keys.values():
        for pem in (private, public):
            found += [ln for ln in pem.read_text().splitlines() if ln and "-----" not in ln]
        raw = load_public_key(public).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        found += [raw.hex(), base64.b64encode(raw).decode()]
    return found


@pytest.mark.slow
def test_only_bundles_signed_by_a_trusted_key_are_deployed(
    agent_process: Callable[..., AgentProcess],
    versions: Callable[..., Path],
    keys: Keys,
    tmp_path: Path,
) -> None:
    release, stranger = keys["release"][0], keys["stranger"][0]
    v1 = versions("1", key=release, source="tflite-int8")
    agent = agent_process("--config", write_toml(tmp_path / "agent.toml", v1, [keys["release"][1]]))
    assert answered_by(agent, X[:1]) == "1"

    unsigned = versions("3")
    by_a_stranger = versions("4", key=stranger)
    edited = versions("5", key=release)  # a new model file, the manifest updated to match
    tamper(edited / "model.onnx")
    manifest = json.loads((edited / MANIFEST_FILE).read_text())
    manifest["sha256"] = sha256_file(edited / "model.onnx")
    (edited / MANIFEST_FILE).write_text(json.dumps(manifest))
    Bundle.open(edited)  # consistent: only the signature can tell
    altered = versions("6", key=release)  # the model file changed, the manifest not
    tamper(altered / "model.onnx")

    stranger_id = key_id(load_public_key(keys["stranger"][1]))
    refused = {
        unsigned: "digits 3 is not signed (no signature.json)",
        by_a_stranger: f"signed by key {stranger_id}, which is not a trusted key",
        edited: "digits 5: the signature does not match manifest.json",
        altered: "sha256 mismatch for model.onnx",
    }
    with admin(agent) as client:
        for bundle, reason in refused.items():
            answer = client.post("/deploy", json={"bundle": str(bundle)})
            assert answer.status_code == 422, answer.text
            assert reason in answer.json()["error"]

    # The command uploads the bundle as a .tar: the same refusal, as one line.
    uploaded = run_edgedl("agent", "deploy", unsigned, "--agent", agent.url, "--token", TOKEN)
    assert uploaded.code == 1
    assert "digits 3 is not signed" in uploaded.last_error_line
    assert "Traceback" not in uploaded.stderr

    assert answered_by(agent, X[:1]) == "1"
    shown = status(agent)
    assert shown["rollout"] is None and shown["serving"] == "1"
    assert [v["version"] for v in shown["versions"]] == ["1"]
    reasons = [e["reason"] for e in shown["history"] if e["action"] == "refused"]
    assert any("is not signed" in r for r in reasons)

    # A version signed by the release key goes through.
    deployed = run_edgedl(
        "agent", "deploy", versions("2", key=release), "--strategy", "bluegreen",
        "--probation-requests", "3", "--agent", agent.url, "--token", TOKEN,
    )  # fmt: skip
    assert deployed.code == 0, deployed.stderr
    assert [answered_by(agent, x[None]) for x in X[:4]] == ["2"] * 4
    assert status(agent)["current"] == "2"

    assert agent.terminate() == 0
    log = agent.output
    assert TOKEN not in log
    for secret in key_material(keys):
        assert secret not in log
    state = (tmp_path / "store" / "digits" / "state.json").read_text()
    assert TOKEN not in state and not any(s in state for s in key_material(keys))


@pytest.mark.slow
def test_an_agent_that_requires_signatures_will_not_start_on_an_unsigned_bundle(
    versions: Callable[..., Path], keys: Keys, tmp_path: Path
) -> None:
    v1 = versions("1", source="tflite-int8")
    config = write_toml(tmp_path / "agent.toml", v1, [keys["release"][1]])
    started = run_edgedl("agent", "serve", "--config", config, "--port", "0", timeout=120)
    assert started.code == 1
    assert "digits 1 is not signed" in started.last_error_line
    assert "Traceback" not in started.stderr

    # Saying require_signature = false lets it through (the operator's explicit choice).
    relaxed = write_toml(
        tmp_path / "relaxed.toml", v1, [keys["release"][1]], "require_signature = false\n"
    )
    assert _admission(relaxed).admit(Bundle.open(v1)) is None


def test_trusted_keys_that_cannot_be_read_name_the_key(keys: Keys, tmp_path: Path) -> None:
    v1 = tmp_path / "unused"
    missing = write_toml(tmp_path / "a.toml", v1, [keys["release"][1], tmp_path / "gone.pub"])
    with pytest.raises(ConfigError, match=r"security.trusted_keys.1: public key not found"):
        _admission(missing)
    private = write_toml(tmp_path / "b.toml", v1, [keys["release"][0]])
    with pytest.raises(ConfigError, match=r"trusted_keys.0: .* this is a private key"):
        _admission(private)
    no_keys = write_toml(tmp_path / "c.toml", v1, [], "require_signature = true\n")
    with pytest.raises(ConfigError, match="require_signature is true but no trusted_keys"):
        _admission(no_keys)

    answer = run_edgedl("agent", "serve", "--config", missing, "--port", "0", timeout=120)
    assert answer.code == 1 and "security.trusted_keys.1" in answer.last_error_line
    assert "Traceback" not in answer.stderr


def test_a_pipeline_model_must_be_signed_too(keys: Keys, tmp_path: Path) -> None:
    from onnx import helper

    from edgedl.agent.pipeline.config import PipelineConfig
    from edgedl.agent.security import BundleAdmission, SecurityConfig

    identity = [helper.make_node("Identity", ["x"], ["y"])]
    unsigned = make_onnx_bundle(tmp_path, "scores", identity, [], "n")
    pipeline = PipelineConfig.model_validate(
        {
            "name": "kws",
            "stages": [
                {"type": "window", "length_ms": 1000},
                {"type": "model", "bundle": str(unsigned), "name": "classifier"},
            ],
        }
    )
    admission = BundleAdmission.from_config(SecurityConfig(trusted_keys=[str(keys["release"][1])]))
    with pytest.raises(SignatureError, match=r"pipeline 'kws', stage 'classifier': .* not signed"):
        admission.admit_pipelines([pipeline])
    sign_bundle(unsigned, keys["release"][0])
    admission.admit_pipelines([pipeline])


def _admission(config_path: Path) -> Any:
    from edgedl.agent.config import load_config
    from edgedl.agent.security import BundleAdmission

    return BundleAdmission.from_config(load_config(config_path, env={}).security)


def test_the_security_guide_shows_a_working_config(keys: Keys) -> None:
    import re

    from edgedl.agent.config import load_config

    guide = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    block = re.search(r"```toml\n(# agent.toml\n\[security\].*?)```", guide, re.S)
    assert block is not None
    documented = block.group(1).replace("/etc/edgedl/keys/release.pub", str(keys["release"][1]))
    path = keys["release"][1].parent / "agent.toml"
    path.write_text(documented)
    config = load_config(path, env={})
    assert config.security.signatures_required
    assert set(_admission(path).trusted) == {key_id(load_public_key(keys["release"][1]))}
