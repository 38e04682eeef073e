"""agent.toml: sections, defaults, environment overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import run_edgedl

from edgedl.agent.config import load_config
from edgedl.errors import ConfigError

FULL = """
[server]
host = "0.0.0.0"
port = 9000
max_request_bytes = 1024

[[models]]
path = "/opt/bundles/digits"
max_batch_size = 16
max_queue_delay_ms = 5
nonfinite = "count"

[[models]]
path = "/opt/bundles/kws"

[store]
path = "/data/edgedl"

[telemetry]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_a_config_file_fills_every_section_and_defaults_the_rest(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), env={})
    assert config.server.host == "0.0.0.0"
    assert config.server.port == 9000
    assert config.server.max_request_bytes == 1024
    assert [m.path for m in config.models] == ["/opt/bundles/digits", "/opt/bundles/kws"]
    assert config.models[0].max_batch_size == 16
    assert config.models[0].nonfinite == "count"
    assert config.models[1].max_batch_size == 8
    assert config.models[1].nonfinite == "reject"
    assert config.store.path == "/data/edgedl"
    assert config.pipelines == []


def test_no_file_means_defaults() -> None:
    config = load_config(None, env={})
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8080)
    assert config.models == []


def test_environment_overrides_nested_keys_and_list_entries(tmp_path: Path) -> None:
    env = {
        "EDGEDL_AGENT__SERVER__PORT": "8081",
        "EDGEDL_AGENT__MODELS__0__MAX_BATCH_SIZE": "32",
        "EDGEDL_AGENT__SERVER__ACCESS_LOG": "true",
        "UNRELATED": "x",
    }
    config = load_config(write(tmp_path, FULL), env=env)
    assert config.server.port == 8081
    assert config.server.access_log is True
    assert config.models[0].max_batch_size == 32


def test_command_line_overrides_win_over_the_environment(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, FULL),
        env={"EDGEDL_AGENT__SERVER__PORT": "8081"},
        overrides={"server.port": 7000},
    )
    assert config.server.port == 7000


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ('[server]\nport = "eighty"\n', {}, "server.port"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("[server]\nprot = 1\n", {}, "server.prot"),
        ('[[models]]\npath = "x"\nnonfinite = "ignore"\n', {}, "models.0.nonfinite"),
        ("[[models]]\nmax_batch_size = 4\n", {}, "models.0.path"),
        ("[server\n", {}, "invalid TOML"),
        ("", {"EDGEDL_AGENT__SERVER__PORT": "x"}, "EDGEDL_AGENT__SERVER__PORT"),
        ("", {"EDGEDL_AGENT__MODELS__3__PATH": "x"}, "no index '3'"),
    ],
)
def test_a_bad_config_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        load_config(write(tmp_path, text), env=env)


def test_the_cli_reports_a_bad_config_in_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = -5\n")
    result = run_edgedl("agent", "serve", "--config", path)
    assert result.code != 0
    assert "server.port" in result.last_error_line
    assert "Traceback" not in result.stderr


def test_the_cli_reports_a_missing_bundle_in_one_line(tmp_path: Path) -> None:
    result = run_edgedl("agent", "serve", "--model", tmp_path / "nowhere", "--port", "0")
    assert result.code != 0
    assert "bundle not found" in result.last_error_line
    assert "Traceback" not in result.stderr


def test_the_docs_describe_every_server_and_model_key() -> None:
    from edgedl.agent.config import ModelConfig, ServerConfig

    docs = (Path(__file__).parents[2] / "docs" / "agent.md").read_text()
    for model in (ServerConfig, ModelConfig):
        for key in model.model_fields:
            assert f"| `{key}` |" in docs, f"docs/agent.md does not describe {key}"
