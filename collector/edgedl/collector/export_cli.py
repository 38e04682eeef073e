"""``edgedl collector export``: the stored samples for retraining, as a ``.npz`` dataset."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from edgedl.errors import UsageError


def parse_since(value: str) -> float:
    """Seconds since the epoch from ``value``: a number, or an ISO 8601 date or time (UTC
    unless it names its zone)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {value!r}: give seconds since 1970 or an ISO 8601 time (2026-11-30T17:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="collector.toml")
@click.option("--db", "db_url", help="sqlite:///path.db (default) or postgresql://user@host/db.")
@click.option("--fleet", help="Only this fleet's samples.")
@click.option("--device", help="Only this device's samples.")
@click.option("--since", help="Only samples taken at or after this time (ISO 8601 or seconds).")
@click.option(
    "--reason", type=click.Choice(["rate", "low_confidence"]), help="Only samples chosen so."
)
@click.option("--labelled", is_flag=True, help="Only samples whose true label arrived.")
@click.option("--input", "input_name", help="The input to export when a model has several.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="data.npz")
def export(
    config_path: str | None,
    db_url: str | None,
    fleet: str | None,
    device: str | None,
    since: str | None,
    reason: str | None,
    labelled: bool,
    input_name: str | None,
    output: str,
) -> None:
    """Write the stored samples as a dataset (x, y where known, metadata) in a .npz file."""
    from .config import load_config
    from .samples import export_samples
    from .store import Store

    overrides = {"storage.url": db_url} if db_url else {}
    store = Store(load_config(config_path, overrides=overrides).storage.url)
    try:
        found = export_samples(
            store,
            fleet=fleet,
            device=device,
            since=parse_since(since) if since is not None else None,
            reason=reason,
            labelled_only=labelled,
            input_name=input_name,
        )
    finally:
        store.close()
    path = found.save(output)
    click.echo(
        f"wrote {len(found)} samples ({found.labelled} labelled), x of shape "
        f"{tuple(found.x.shape)}, to {path}"
    )


__all__ = ["export", "parse_since"]
