"""The agent's configuration: ``agent.toml`` plus ``EDGEDL_AGENT__...`` environment overrides.

One pydantic model per section; :class:`AgentConfig` composes them::

    [server]        host, port, request limits, admin token, shutdown
    [[models]]      one table per bundle to serve, with its batching settings
    [store]         the on-disk model store (edgedl.agent.rollout)
    [rollout]       rollout defaults (edgedl.agent.rollout)
    [[pipelines]]   streaming pipelines (edgedl.agent.pipeline)
    [telemetry]     MQTT telemetry (edgedl.agent.telemetry)
    [security]      trusted signing keys for bundles (edgedl.agent.security)
    [fleet]         over-the-air updates from the collector (edgedl.agent.fleet)

Environment variables override the file: ``EDGEDL_AGENT__SERVER__PORT=8081`` sets
``server.port``; a list element is addressed by its index
(``EDGEDL_AGENT__MODELS__0__MAX_BATCH_SIZE=16``). Values are parsed as JSON when they look
like JSON (numbers, booleans, lists) and kept as strings otherwise; pydantic converts them.
Any problem raises :class:`~edgedl.errors.ConfigError` naming the key (and the variable,
when it came from the environment).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgedl.errors import ConfigError

from .fleet.config import FleetUpdatesConfig
from .pipeline.config import PipelineConfig
from .rollout.config import RolloutConfig, StoreConfig
from .security import SecurityConfig
from .telemetry.config import TelemetryConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "EDGEDL_AGENT__"


class ServerConfig(BaseModel):
    """``[server]``: where the API listens and how it protects itself."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    admin_token: str | None = None
    admin_token_file: str | None = None
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    profile_max_cpu: float = Field(default=0.05, gt=0, le=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False

    def resolved_admin_token(self) -> str | None:
        """The admin token, read from ``admin_token_file`` when that is set."""
        if self.admin_token_file:
            try:
                return Path(self.admin_token_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise ConfigError(
                    f"server.admin_token_file: cannot read {self.admin_token_file} ({exc.strerror})"
                ) from exc
        return self.admin_token


class ModelConfig(BaseModel):
    """``[[models]]``: one bundle to serve and how to batch its requests."""

    model_config = ConfigDict(extra="forbid")
    path: str
    max_batch_size: int = Field(default=8, ge=1)
    max_queue_delay_ms: float = Field(default=0.0, ge=0)
    queue_size: int = Field(default=256, ge=1)
    timeout_ms: float = Field(default=10_000.0, gt=0)
    instances: int = Field(default=1, ge=1)
    threads: int | None = Field(default=None, ge=0)
    backend: str | None = None
    nonfinite: Literal["reject", "count"] = "reject"
    latency_threshold_ms: float = Field(default=100.0, gt=0)


class AgentConfig(BaseModel):
    """The whole ``agent.toml``."""

    model_config = ConfigDict(extra="forbid")
    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    store: StoreConfig = Field(default_factory=StoreConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    fleet: FleetUpdatesConfig = Field(default_factory=FleetUpdatesConfig)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Read ``path`` (optional), apply environment overrides, then ``overrides``; validate.

    ``overrides`` maps dotted keys (``"server.port"``) to values, for command-line flags.
    Raise :class:`ConfigError` naming the file, the key and the problem.
    """
    source = str(path) if path is not None else "configuration"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {p}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    from_env: dict[tuple[str, ...], str] = {}
    for name, value in sorted((env if env is not None else os.environ).items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = tuple(k.lower() for k in name[len(ENV_PREFIX) :].split("__"))
        if not all(keys):
            raise ConfigError(f"{name}: empty key in environment override")
        _set_path(data, keys, _parse_env_value(value), name)
        from_env[keys] = name
    for dotted, value in (overrides or {}).items():
        _set_path(data, tuple(dotted.split(".")), value, dotted)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "config"
        where = next(
            (f" (from {var})" for keys, var in from_env.items() if loc[: len(keys)] == keys), ""
        )
        # A broker URL or a password may carry a secret: never echo those back.
        secret = loc[-1:] in (("password",), ("mqtt",), ("admin_token",))
        got = (
            f" (got {err['input']!r})"
            if "input" in err and not isinstance(err["input"], dict) and not secret
            else ""
        )
        raise ConfigError(f"{source}: {key}: {err['msg']}{got}{where}") from exc


def _parse_env_value(value: str) -> Any:
    text = value.strip()
    if text[:1] in "[{" or text in ("true", "false"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def _set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any, origin: str) -> None:
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"{origin}: {'.'.join(keys[:i])} has {len(node)} entries, no index {key!r}"
                )
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[:i])} is not a table")
        if last:
            node[key] = value
        elif keys[i + 1].isdigit():
            node = node.setdefault(key, [])
        else:
            node = node.setdefault(key, {})
