"""Configuration of telemetry (``[telemetry]`` in agent.toml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class TelemetryConfig(BaseModel):
    """Off unless a broker URL is given."""

    model_config = ConfigDict(extra="forbid")
    mqtt: str | None = None
