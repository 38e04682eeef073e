"""``edgedl collector devices``: the registry of enrolled devices (``add``, ``ls``, ``rm``).

With ``[registry] required = true`` (or ``edgedl collector run --registry-required``) the
collector stores windows and statuses only from enrolled ``(fleet, device)`` pairs; the others
become dead letters with the reason "unknown device". The registry lives in the collector's
database, so a running collector sees a change with its next batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from edgedl.telemetry import validate_id

_config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="collector.toml"
)
_db_option = click.option(
    "--db", "db_url", help="sqlite:///path.db (default) or postgresql://user@host/db."
)


def _with_registry(
    config_path: str | None, db_url: str | None, action: Callable[[Any], None]
) -> None:
    from .config import load_config
    from .registry import DeviceRegistry
    from .store import Store

    overrides = {"storage.url": db_url} if db_url else {}
    store = Store(load_config(config_path, overrides=overrides).storage.url)
    try:
        action(DeviceRegistry(store))
    finally:
        store.close()


@click.group()
def devices() -> None:
    """Enrol devices: with [registry] required, only these may report."""


@devices.command("add")
@click.argument("fleet")
@click.argument("device")
@_config_option
@_db_option
def add(fleet: str, device: str, config_path: str | None, db_url: str | None) -> None:
    """Enrol DEVICE of FLEET."""
    validate_id(fleet, "fleet")
    validate_id(device, "device")

    def action(registry: Any) -> None:
        new = registry.add(fleet, device)
        click.echo(f"{fleet}/{device}: " + ("enrolled" if new else "already enrolled"))

    _with_registry(config_path, db_url, action)


@devices.command("rm")
@click.argument("fleet")
@click.argument("device")
@_config_option
@_db_option
def rm(fleet: str, device: str, config_path: str | None, db_url: str | None) -> None:
    """Remove DEVICE of FLEET from the registry (its stored telemetry stays)."""
    from edgedl.errors import EdgeDLError

    def action(registry: Any) -> None:
        if not registry.remove(fleet, device):
            raise EdgeDLError(f"{fleet}/{device} is not enrolled")
        click.echo(f"{fleet}/{device}: removed")

    _with_registry(config_path, db_url, action)


@devices.command("ls")
@_config_option
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls(config_path: str | None, db_url: str | None, as_json: bool) -> None:
    """List the enrolled devices."""

    def action(registry: Any) -> None:
        rows = registry.enrolled()
        if as_json:
            click.echo(json.dumps([{"fleet": r["fleet"], "device": r["device"]} for r in rows]))
            return
        if not rows:
            click.echo("no device enrolled")
        for r in rows:
            click.echo(f"{r['fleet']}/{r['device']}")

    _with_registry(config_path, db_url, action)
