"""``edgedl collector``: receive telemetry, store it, compute drift, raise alerts, serve the dashboard."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import click

from .devices_cli import devices
from .export_cli import export


@click.group()
def collector() -> None:
    """Receive device telemetry: storage, drift, alerts, dashboard."""


@collector.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="collector.toml")
@click.option("--mqtt", "mqtt_url", help="Broker URL: mqtt://host:1883 or mqtts://host:8883.")
@click.option("--db", "db_url", help="sqlite:///path.db (default) or postgresql://user@host/db.")
@click.option("--http-host", help="Address of the API and dashboard (default 127.0.0.1).")
@click.option("--http-port", type=int, help="Port of the API and dashboard (0: any free one).")
@click.option("--group", help="Shared-subscription group: collectors of one group split the load.")
@click.option(
    "--fleet",
    "fleets",
    multiple=True,
    help="Only this fleet's devices (repeatable; default: every fleet).",
)
@click.option(
    "--shared/--no-shared",
    default=None,
    help="Shared subscription (default) so collectors of a group split the load; "
    "--no-shared for a single collector whose subscription survives broker restarts.",
)
@click.option(
    "--client-id", help="MQTT client id (stable, one per collector: it names the session)."
)
@click.option("--username", help="MQTT user name.")
@click.option("--password", help="MQTT password (or EDGEDL_COLLECTOR__MQTT__PASSWORD).")
@click.option(
    "--ca-file", type=click.Path(exists=True, dir_okay=False), help="CA certificate (TLS)."
)
@click.option(
    "--cert-file", type=click.Path(exists=True, dir_okay=False), help="Client certificate."
)
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), help="Client key.")
@click.option(
    "--reference",
    "references",
    multiple=True,
    type=click.Path(exists=True),
    help="A bundle (directory or .tar) or manifest.json whose reference profile drift is judged against. Repeatable.",
)
@click.option(
    "--pipeline-reference",
    "pipeline_references",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A pipeline's stage-health profile (edgedl agent run-pipeline --profile). Repeatable.",
)
@click.option("--webhook", help="POST every alert change to this URL as JSON.")
@click.option(
    "--min-samples", type=int, help="Samples a sliding window needs before drift is judged."
)
@click.option(
    "--registry-required",
    is_flag=True,
    default=None,
    help="Only devices enrolled with 'edgedl collector devices add' may report.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log what the collector does.")
def run(
    config_path: str | None,
    mqtt_url: str | None,
    db_url: str | None,
    http_host: str | None,
    http_port: int | None,
    group: str | None,
    fleets: tuple[str, ...],
    shared: bool | None,
    client_id: str | None,
    username: str | None,
    password: str | None,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    references: tuple[str, ...],
    pipeline_references: tuple[str, ...],
    webhook: str | None,
    min_samples: int | None,
    registry_required: bool | None,
    verbose: bool,
) -> None:
    """Run the collector until SIGTERM or SIGINT (then finish the batch in hand and exit 0)."""
    from .config import load_config
    from .service import Collector, tune_gc

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Which collector of a group runs the wave controller, and each handover, always show.
    logging.getLogger("edgedl.collector.leader").setLevel(logging.INFO)
    flags: dict[str, Any] = {
        "mqtt.url": mqtt_url,
        "mqtt.group": group,
        "mqtt.shared": shared,
        "mqtt.fleets": list(fleets) if fleets else None,
        "mqtt.client_id": client_id,
        "mqtt.username": username,
        "mqtt.password": password,
        "mqtt.ca_file": ca_file,
        "mqtt.cert_file": cert_file,
        "mqtt.key_file": key_file,
        "storage.url": db_url,
        "http.host": http_host,
        "http.port": http_port,
        "alerts.webhook": webhook,
        "drift.min_samples": min_samples,
        "registry.required": registry_required,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    config = load_config(config_path, overrides=overrides)
    if references:
        config.references = [*config.references, *references]
    if pipeline_references:
        config.pipeline_references = [*config.pipeline_references, *pipeline_references]
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = Collector(config).start()
    tune_gc()
    click.echo(
        f"edgedl collector: dashboard and API on {service.url}, broker {config.mqtt.url}, "
        f"group {config.mqtt.group}, client id {service.mqtt.client_id if service.mqtt else '-'}",
        err=False,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        service.stop()
    click.echo("edgedl collector: stopped")


collector.add_command(devices)
collector.add_command(export)

__all__ = ["collector"]
