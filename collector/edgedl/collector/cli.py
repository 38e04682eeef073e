"""``edgedl collector``: receive telemetry, store it, compute drift, raise alerts, serve the dashboard."""

from __future__ import annotations

import click


@click.group()
def collector() -> None:
    """Receive device telemetry: storage, drift, alerts, dashboard."""


__all__ = ["collector"]
