"""``edgedl agent``: the on-device service and the commands that talk to it.

Each subcommand lives in the module that owns its job and is registered here, so the group
stays a table of contents.
"""

from __future__ import annotations

import click

from .batch import batch
from .pipeline_cli import run_pipeline
from .rollout_cli import deploy, promote, rollback, status
from .serve import serve
from .systemd import install_service


@click.group()
def agent() -> None:
    """Serve bundles on a device: inference API, pipelines, versions, telemetry."""


agent.add_command(serve)
agent.add_command(batch)
agent.add_command(install_service)
agent.add_command(run_pipeline)
for _command in (deploy, promote, rollback, status):
    agent.add_command(_command)


__all__ = ["agent"]
