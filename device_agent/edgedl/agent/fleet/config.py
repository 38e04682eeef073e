"""Configuration of over-the-air updates (``[fleet]`` in agent.toml).

```toml
[fleet]
updates = true            # follow edgedl/v1/{fleet}/{device}/desired (needs [telemetry] mqtt)
min_free_mb = 50          # keep this much disk free besides the download and its copies
```

The broker, TLS, credentials, fleet and device come from ``[telemetry]``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FleetUpdatesConfig(BaseModel):
    """``[fleet]``: whether and how the agent follows the fleet's desired state."""

    model_config = ConfigDict(extra="forbid")
    updates: bool = False
    downloads_path: str | None = None
    """Partial and finished downloads (default: ``<store>/.downloads``)."""
    min_free_mb: float = Field(default=50.0, ge=0)
    download_timeout_s: float = Field(default=30.0, gt=0, description="per read, not in total")
    download_attempts: int = Field(default=20, ge=1)
    retry_min_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    status_interval_s: float = Field(default=2.0, gt=0, description="shadow figures refresh")
