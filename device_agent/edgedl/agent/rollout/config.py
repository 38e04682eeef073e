"""Configuration of the model store and rollouts (``[store]``, ``[rollout]`` in agent.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["bluegreen", "canary", "shadow"]
STRATEGIES: tuple[Strategy, ...] = ("bluegreen", "canary", "shadow")
ADMIN_TOKEN_ENV = "EDGEDL_ADMIN_TOKEN"


class StoreConfig(BaseModel):
    """Where versions are kept and how many."""

    model_config = ConfigDict(extra="forbid")
    path: str = "/var/lib/edgedl"
    keep: int = Field(
        default=3, ge=2, description="versions kept per model (active + previous at least)"
    )


class Bounds(BaseModel):
    """When a candidate counts as bad: judged once it has served ``min_requests``."""

    model_config = ConfigDict(extra="forbid")
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    min_requests: int = Field(default=20, ge=1)


class DeployOptions(Bounds):
    """One deployment: the strategy and its options (defaults come from ``[rollout]``)."""

    strategy: Strategy = "bluegreen"
    # bluegreen: probation ends after this many candidate requests or seconds, whichever first.
    probation_requests: int | None = Field(default=100, ge=1)
    probation_s: float | None = Field(default=300.0, gt=0)
    # canary: the share of traffic the candidate gets, and the good requests that promote it.
    share: float = Field(default=0.1, gt=0, le=1)
    promote_after: int = Field(default=100, ge=1)

    @model_validator(mode="after")
    def _probation_ends(self) -> DeployOptions:
        if (
            self.strategy == "bluegreen"
            and self.probation_requests is None
            and self.probation_s is None
        ):
            raise ValueError("bluegreen needs probation_requests or probation_s")
        return self


class RolloutConfig(DeployOptions):
    """Defaults for deployments started without explicit options (the admin token is
    ``server.admin_token``)."""

    shadow_max_pending: int = Field(
        default=8, ge=1, description="shadow requests in flight before copies are skipped"
    )
    max_upload_mb: float = Field(default=512, gt=0, description="largest bundle .tar accepted")

    def deploy_defaults(self) -> DeployOptions:
        """The deployment options this config implies."""
        return DeployOptions.model_validate(
            self.model_dump(include=set(DeployOptions.model_fields))
        )
