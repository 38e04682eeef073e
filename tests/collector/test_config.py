"""collector.toml, environment overrides and flags; an error names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedl.collector.config import load_config
from edgedl.errors import ConfigError


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text('[drift]\npsi_alert = 0.3\nmin_samples = 50\n[mqtt]\ngroup = "eu"\n')
    cfg = load_config(
        conf,
        env={
            "EDGEDL_COLLECTOR__DRIFT__MIN_SAMPLES": "500",
            "EDGEDL_COLLECTOR__DRIFT__ALERT_ON": '["psi", "js"]',
        },
        overrides={"mqtt.group": "us"},
    )
    assert cfg.drift.psi_alert == 0.3
    assert cfg.drift.min_samples == 500
    assert cfg.drift.alert_on == ["psi", "js"]
    assert cfg.mqtt.group == "us"


def test_an_environment_error_names_the_variable() -> None:
    with pytest.raises(
        ConfigError, match=r"drift.min_samples.*EDGEDL_COLLECTOR__DRIFT__MIN_SAMPLES"
    ):
        load_config(None, env={"EDGEDL_COLLECTOR__DRIFT__MIN_SAMPLES": "lots"})


def test_unknown_keys_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text("[drift]\npsi_alrt = 0.3\n")
    with pytest.raises(ConfigError, match=r"drift\.psi_alrt"):
        load_config(conf, env={})


def test_the_documented_collector_toml_is_valid(tmp_path: Path) -> None:
    page = (Path(__file__).parents[2] / "docs" / "collector.md").read_text(encoding="utf-8")
    example = page.split("```toml\n", 1)[1].split("```", 1)[0]
    conf = tmp_path / "collector.toml"
    conf.write_text(example)
    cfg = load_config(conf, env={})
    assert cfg.drift.false_alarm_rate == 0.01
    assert "cusum" in cfg.drift.alert_on
    assert cfg.drift.sequential.statistics["input/*/nonfinite"] == 0


def test_a_run_length_of_one_window_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"drift\.sequential"):
        load_config(None, env={}, overrides={"drift.sequential.windows_between_false_alarms": 1})
