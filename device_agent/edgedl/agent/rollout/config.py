"""Configuration of the model store and rollouts (``[store]``, ``[rollout]`` in agent.toml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StoreConfig(BaseModel):
    """Where versions are kept and how many."""

    model_config = ConfigDict(extra="forbid")
    path: str = "/var/lib/edgedl"
    keep: int = 3


class RolloutConfig(BaseModel):
    """Defaults for deployments started without explicit bounds."""

    model_config = ConfigDict(extra="forbid")
