"""docs/rollout.md stays true: its config is valid, its options and flags exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_edgedl

from edgedl.agent.config import load_config
from edgedl.agent.rollout.config import RolloutConfig, StoreConfig

DOCS = Path(__file__).parents[2] / "docs" / "rollout.md"


def test_the_example_agent_toml_is_a_valid_config(tmp_path: Path) -> None:
    toml = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert toml is not None
    path = tmp_path / "agent.toml"
    path.write_text(toml.group(1))
    config = load_config(path, env={})
    assert config.server.resolved_admin_token() == "change-me"
    assert (config.store.path, config.store.keep) == ("/var/lib/edgedl", 3)


def test_every_rollout_and_store_key_is_documented() -> None:
    docs = DOCS.read_text()
    for key in RolloutConfig.model_fields:
        assert re.search(rf"\| `{key}` +\|", docs), f"docs/rollout.md lacks rollout.{key}"
    for key in StoreConfig.model_fields:
        assert f"`{key}`" in docs, f"docs/rollout.md does not describe store.{key}"


def test_every_documented_flag_exists() -> None:
    docs = DOCS.read_text()
    help_text = "".join(
        run_edgedl("agent", command, "--help").stdout
        for command in ("deploy", "promote", "rollback", "status")
    )
    flags = set(re.findall(r"`(--[a-z0-9-]+)`", docs)) | set(re.findall(r"\[(--[a-z0-9-]+)", docs))
    assert "--strategy" in flags and "--promote-after" in flags
    for flag in flags:
        assert flag.split("/")[0] in help_text, f"{flag} is documented but not an option"
