"""``edgedl fleet``: publish bundles to the collector, roll them out, watch the rollouts.

Every command talks to the collector's HTTP API (``--collector``, or ``EDGEDL_COLLECTOR``,
default ``http://127.0.0.1:8090``); the collector runs the rollouts (docs/fleet.md).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .errors import FleetError

DEFAULT_COLLECTOR = "http://127.0.0.1:8090"
_collector_option = click.option(
    "--collector",
    envvar="EDGEDL_COLLECTOR",
    default=DEFAULT_COLLECTOR,
    show_default=True,
    help="The collector's HTTP address (or EDGEDL_COLLECTOR).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def call(method: str, url: str, **kwargs: Any) -> Any:
    """One request to the collector; :class:`FleetError` with its message when it refuses."""
    import httpx

    try:
        response = httpx.request(method, url, timeout=kwargs.pop("timeout", 30.0), **kwargs)
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach the collector at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            message = response.json().get("error") or response.text
        except (ValueError, AttributeError):
            message = response.text[:300]
        raise FleetError(f"the collector refused ({response.status_code}): {message}")
    return response.json()


@contextmanager
def bundle_tar(path: Path) -> Iterator[Path]:
    """``path`` as a ``.tar``: itself, or a temporary ``.tar`` of a bundle directory."""
    if path.is_file():
        yield path
        return
    if not (path / "manifest.json").is_file():
        raise FleetError(f"{path} is not a bundle (a directory with manifest.json, or a .tar)")
    with tempfile.TemporaryDirectory(prefix="edgedl-publish-") as tmp:
        tar_path = Path(tmp) / f"{path.name}.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(path, arcname=path.name)
        yield tar_path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@click.group()
def fleet() -> None:
    """Roll model versions out to a fleet through the collector."""


@fleet.command()
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@_collector_option
@_json_option
def publish(bundle: Path, collector: str, as_json: bool) -> None:
    """Upload a bundle (directory or .tar) to the collector's artifact store."""
    with bundle_tar(bundle) as tar_path:
        sha256 = _sha256(tar_path)
        with open(tar_path, "rb") as body:
            result = call(
                "POST",
                f"{collector.rstrip('/')}/api/v1/artifacts",
                content=body,
                headers={"content-type": "application/x-tar", "x-edgedl-sha256": sha256},
                timeout=600.0,
            )
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    signed = f"signed by {result['signed_by']}" if result.get("signed_by") else "unsigned"
    what = "published" if result.get("created") else "already published"
    click.echo(
        f"{what}: {result['model']} {result['version']} ({result['size_bytes']} bytes, "
        f"sha256 {result['sha256'][:12]}…, {signed}) at {result['url']}"
    )


@fleet.command("ls")
@_collector_option
@_json_option
def list_models(collector: str, as_json: bool) -> None:
    """List published models and versions, and which devices run which."""
    models = call("GET", f"{collector.rstrip('/')}/api/v1/fleet/models")
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    if not models:
        click.echo("no models published and no device reporting one")
    for name, entry in sorted(models.items()):
        versions = ", ".join(v["version"] for v in entry["versions"]) or "none published"
        click.echo(f"{name}: published {versions}")
        for device, d in sorted(entry["devices"].items()):
            state = d.get("rollout") or {}
            extra = f"  [{state['state']} {state.get('version')}]" if state.get("state") else ""
            online = "online" if d["online"] else "offline"
            click.echo(f"  {device} ({d['fleet']}, {online}): {d['version']}{extra}")


@fleet.command()
@click.argument("model")
@click.argument("version")
@click.option("--fleet", "fleet_id", help="The fleet (default: the only one the collector knows).")
@click.option("--devices", help="All devices (default), a list a,b,c, or a glob like 'pi-*'.")
@click.option(
    "--strategy", type=click.Choice(["bluegreen", "canary", "shadow"]), default="bluegreen"
)
@click.option("--waves", default="1,10%,100%", show_default=True, help="Cumulative wave sizes.")
@click.option("--probation", type=click.FloatRange(min=0, min_open=True), help="Seconds per wave.")
@click.option("--arrival-timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--max-error-rate", type=click.FloatRange(0, 1), help="Gate: errors / requests.")
@click.option(
    "--max-p95-ms", type=click.FloatRange(min=0, min_open=True), help="Gate: p95 latency."
)
@click.option(
    "--max-p95-ratio",
    type=click.FloatRange(min=0, min_open=True),
    help="Gate: vs the previous version.",
)
@click.option(
    "--max-drift-psi", type=click.FloatRange(min=0, min_open=True), help="Gate: output drift."
)
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Gate: shadow top-1 agreement.")
@click.option("--min-inferences", type=click.IntRange(min=1), help="Requests before gates judge.")
@click.option(
    "--option", "options", multiple=True, help="Agent deploy option KEY=VALUE (e.g. share=0.2)."
)
@click.option("--wait", is_flag=True, help="Wait until the rollout completes or halts.")
@_collector_option
@_json_option
def rollout(
    model: str,
    version: str,
    fleet_id: str | None,
    devices: str | None,
    strategy: str,
    waves: str,
    probation: float | None,
    arrival_timeout: float | None,
    max_error_rate: float | None,
    max_p95_ms: float | None,
    max_p95_ratio: float | None,
    max_drift_psi: float | None,
    min_agreement: float | None,
    min_inferences: int | None,
    options: tuple[str, ...],
    wait: bool,
    collector: str,
    as_json: bool,
) -> None:
    """Start rolling MODEL VERSION out to a fleet, wave by wave, gated by telemetry."""
    gates = {
        k: v
        for k, v in {
            "max_error_rate": max_error_rate,
            "max_p95_ms": max_p95_ms,
            "max_p95_ratio": max_p95_ratio,
            "max_drift_psi": max_drift_psi,
            "min_agreement": min_agreement,
            "min_inferences": min_inferences,
        }.items()
        if v is not None
    }
    deploy: dict[str, Any] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FleetError(f"--option {item!r}: use KEY=VALUE")
        try:
            deploy[key] = json.loads(value)
        except json.JSONDecodeError:
            deploy[key] = value
    body: dict[str, Any] = {
        "model": model,
        "version": version,
        "fleet": fleet_id,
        "devices": devices,
        "strategy": strategy,
        "waves": waves,
        "probation_s": probation,
        "arrival_timeout_s": arrival_timeout,
        "gates": gates,
        "options": deploy,
    }
    base = collector.rstrip("/")
    created = call(
        "POST", f"{base}/api/v1/rollouts", json={k: v for k, v in body.items() if v is not None}
    )
    if not as_json:
        click.echo(
            f"rollout {created['id']}: {model} {version} to {len(created['devices'])} devices of "
            f"{created['fleet']} in waves of {created['wave_sizes']} ({strategy})"
        )
    if wait:
        while created["state"] == "running":
            time.sleep(1.0)
            created = call("GET", f"{base}/api/v1/rollouts/{created['id']}")
        if not as_json:
            click.echo(f"rollout {created['id']}: {created['state']}: {created['reason']}")
    if as_json:
        click.echo(json.dumps(created, indent=2))
    if created["state"] == "halted":
        raise FleetError(f"rollout {created['id']} halted: {created['reason']}")


@fleet.command()
@click.argument("rollout_id", required=False, type=int)
@_collector_option
@_json_option
def status(rollout_id: int | None, collector: str, as_json: bool) -> None:
    """Show every rollout (or one): its wave, its devices and why it stopped."""
    base = collector.rstrip("/")
    rollouts = (
        [call("GET", f"{base}/api/v1/rollouts/{rollout_id}")]
        if rollout_id is not None
        else call("GET", f"{base}/api/v1/rollouts")
    )
    if as_json:
        click.echo(json.dumps(rollouts, indent=2))
        return
    if not rollouts:
        click.echo("no rollouts")
    for r in rollouts:
        click.echo(
            f"rollout {r['id']}: {r['model']} {r['version']} ({r['strategy']}, {r['fleet']}) "
            f"{r['state']}, wave {r['wave']}/{r['waves']} {r['phase']}"
            + (f": {r['reason']}" if r.get("reason") else "")
        )
        for device in r["devices"]:
            d = r["device_states"].get(device, {})
            serving = ", ".join(f"{m} {v}" for m, v in (d.get("serving") or {}).items()) or "-"
            state = d.get("state") or "pending"
            why = f" ({d['reason']})" if d.get("reason") else ""
            click.echo(f"  {device}: serving {serving}; {state}{why}")


__all__ = ["fleet"]
