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
    [sampling]      inputs kept for retraining, off by default (edgedl.agent.telemetry.sampling)

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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgedl.config import load_toml_config

from .fleet.config import FleetUpdatesConfig
from .labels import LabelsConfig
from .pipeline.config import PipelineConfig
from .rollout.config import RolloutConfig, StoreConfig
from .security import SecurityConfig
from .serving_config import ModelConfig, ServerConfig
from .telemetry.config import TelemetryConfig
from .telemetry.sampling import SamplingConfig

ENV_PREFIX = "EDGEDL_AGENT__"


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


__all__ = ["ENV_PREFIX", "AgentConfig", "ModelConfig", "ServerConfig", "load_config"]
