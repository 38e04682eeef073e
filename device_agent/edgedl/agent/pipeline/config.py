"""Configuration of a pipeline (``[[pipelines]]`` in agent.toml)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class PipelineConfig(BaseModel):
    """One named pipeline: an ordered list of stages."""

    model_config = ConfigDict(extra="forbid")
    name: str
    stages: list[dict[str, Any]]
