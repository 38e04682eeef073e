"""``[server]`` and ``[[models]]``: the sections the serving core reads.

They sit below :mod:`edgedl.agent.config` (which composes every section into
:class:`~edgedl.agent.config.AgentConfig`) so that the serving modules, and the rollout and
pipeline packages, can take them without importing the whole configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from edgedl.errors import ConfigError


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
