"""The agent's configuration: ``agent.toml`` plus ``EDGEDL_AGENT__...`` environment overrides.

One pydantic model per section; :class:`AgentConfig` composes them::

    [server]        host, port, Unix socket, gRPC port, request limits (size, memory, time),
                    admin token, shutdown
    [[models]]      one table per bundle to serve, with its batching settings
    [store]         the on-disk model store (edgedl.agent.rollout)
    [rollout]       rollout defaults (edgedl.agent.rollout)
    [[pipelines]]   streaming pipelines (edgedl.agent.pipeline)
    [telemetry]     MQTT telemetry (edgedl.agent.telemetry)
    [security]      trusted signing keys for bundles (edgedl.agent.security)
    [fleet]         over-the-air updates from the collector (edgedl.agent.fleet)
    [labels]        predictions remembered for late labels (edgedl.agent.labels)
    [sampling]      inputs kept for retraining, off by default (edgedl.agent.sampling)

Environment variables override the file: ``EDGEDL_AGENT__SERVER__PORT=8081`` sets
``server.port``; a list element is addressed by its index
(``EDGEDL_AGENT__MODELS__0__MAX_BATCH_SIZE=16``). Values are parsed as JSON when they look
like JSON (numbers, booleans, lists) and kept as strings otherwise; pydantic converts them.
Any problem raises :class:`~edgedl.errors.ConfigError` naming the key (and the variable,
when it came from the environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from edgedl.config import load_toml_config
from edgedl.errors import ConfigError

from .fleet.config import FleetUpdatesConfig
from .labels import LabelsConfig
from .pipeline.config import PipelineConfig
from .rollout.config import RolloutConfig, StoreConfig
from .sampling import SamplingConfig
from .security import SecurityConfig
from .telemetry.config import TelemetryConfig

ENV_PREFIX = "EDGEDL_AGENT__"


class ServerConfig(BaseModel):
    """``[server]``: where the API listens and how it protects itself."""

    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    # Triton's system shared memory extension over HTTP and gRPC (grpc_shared_memory: its
    # earlier name, still read)
    shared_memory: bool = Field(
        default=False, validation_alias=AliasChoices("shared_memory", "grpc_shared_memory")
    )
    unix_socket: str | None = Field(default=None, min_length=1, max_length=107)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_json_object_bytes: int = Field(default=1024 * 1024, gt=0)
    request_memory_bytes: int = Field(default=512 * 1024 * 1024, gt=0)
    request_memory_wait_s: float = Field(default=5.0, ge=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
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
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Read ``path`` (optional), apply environment overrides, then ``overrides``; validate.

    ``overrides`` maps dotted keys (``"server.port"``) to values, for command-line flags.
    Raise :class:`ConfigError` naming the file, the key and the problem.
    """
    return load_toml_config(AgentConfig, path, env_prefix=ENV_PREFIX, env=env, overrides=overrides)
