"""``edgedl agent deploy | promote | rollback | status``: talk to a running agent's admin API.

The agent's address comes from ``--agent``, else ``EDGEDL_AGENT_URL``, else the
``[server]`` of ``--config``, else http://127.0.0.1:8080. The token comes from ``--token``,
else ``EDGEDL_ADMIN_TOKEN``, else ``server.admin_token`` of ``--config``.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import httpx

from edgedl.bundle import Bundle
from edgedl.cli import emit_json
from edgedl.errors import ServingError, UsageError

from .rollout.config import ADMIN_TOKEN_ENV, STRATEGIES

AGENT_URL_ENV = "EDGEDL_AGENT_URL"
DEFAULT_AGENT = "http://127.0.0.1:8080"


def _connection_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--agent", "agent_url", help=f"Agent URL (default {DEFAULT_AGENT})."),
            click.option("--token", help=f"Admin token (default ${ADMIN_TOKEN_ENV})."),
            click.option(
                "--config",
                "config_path",
                type=click.Path(dir_okay=False),
                help="agent.toml to read the address and token from.",
            ),
            click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait."),
            click.option("--json", "as_json", is_flag=True, help="Print the agent's JSON answer."),
        ]
    ):
        command = option(command)
    return command


class AdminClient:
    """A small client of the agent's admin API; raises :class:`ServingError` on errors."""

    def __init__(self, url: str, token: str | None, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Call ``/v2/admin{path}``; return the JSON answer."""
        try:
            response = self._http.request(method, f"/v2/admin{path}", **kwargs)
        except httpx.TransportError as exc:
            raise ServingError(
                f"cannot reach the agent at {self.url} ({type(exc).__name__}: {exc}); "
                "is 'edgedl agent serve' running there?",
                status=503,
            ) from exc
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text.strip()[:300]}
        if response.status_code >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ServingError(
                f"the agent answered {response.status_code}: {message or response.reason_phrase}",
                status=response.status_code,
            )
        if not isinstance(data, dict):
            raise ServingError(f"the agent answered unexpected JSON: {str(data)[:200]}")
        return data


def _client(
    agent_url: str | None, token: str | None, config_path: str | None, timeout: float
) -> AdminClient:
    url = agent_url or os.environ.get(AGENT_URL_ENV)
    token = token or os.environ.get(ADMIN_TOKEN_ENV)
    if config_path is not None and (url is None or token is None):
        from .config import load_config

        server = load_config(config_path).server
        if url is None:
            host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
            url = f"http://{host}:{server.port}"
        token = token or server.resolved_admin_token()
    if not token:
        raise UsageError(f"no admin token: pass --token or set {ADMIN_TOKEN_ENV}")
    return AdminClient(url or DEFAULT_AGENT, token, timeout)


def _tar_bytes(bundle: Bundle, source: Path) -> bytes:
    if source.is_file():
        return source.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(bundle.path, arcname=bundle.path.name)
    return buffer.getvalue()


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default=None,
    help="bluegreen, canary or shadow (default: [rollout] strategy of the agent).",
)
@click.option("--share", type=click.FloatRange(0, 1, min_open=True), help="canary: traffic share.")
@click.option(
    "--promote-after", type=click.IntRange(min=1), help="canary: good requests to promote."
)
@click.option("--probation-requests", type=click.IntRange(min=1), help="bluegreen: requests.")
@click.option(
    "--probation-s", type=click.FloatRange(min=0, min_open=True), help="bluegreen: seconds."
)
@click.option("--max-error-rate", type=click.FloatRange(0, 1), help="Bound on the error rate.")
@click.option(
    "--max-p95-ms", type=click.FloatRange(min=0, min_open=True), help="Bound on p95 latency."
)
@click.option("--min-requests", type=click.IntRange(min=1), help="Requests before judging bounds.")
@click.option(
    "--upload/--no-upload",
    default=True,
    show_default=True,
    help="Send the bundle to the agent, or only its path (the agent must be able to read it).",
)
@_connection_options
def deploy(
    bundle: Path,
    strategy: str | None,
    share: float | None,
    promote_after: int | None,
    probation_requests: int | None,
    probation_s: float | None,
    max_error_rate: float | None,
    max_p95_ms: float | None,
    min_requests: int | None,
    upload: bool,
    agent_url: str | None,
    token: str | None,
    config_path: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Deploy BUNDLE (directory or .tar) to a running agent with a rollout strategy."""
    opened = Bundle.open(bundle)  # refuse a broken bundle here, before sending it anywhere
    options = {
        k: v
        for k, v in {
            "strategy": strategy,
            "share": share,
            "promote_after": promote_after,
            "probation_requests": probation_requests,
            "probation_s": probation_s,
            "max_error_rate": max_error_rate,
            "max_p95_ms": max_p95_ms,
            "min_requests": min_requests,
        }.items()
        if v is not None
    }
    with _client(agent_url, token, config_path, timeout) as client:
        if upload:
            result = client.request(
                "POST",
                "/deploy",
                params={k: str(v) for k, v in options.items()},
                content=_tar_bytes(opened, bundle),
                headers={"Content-Type": "application/x-tar"},
            )
        else:
            result = client.request(
                "POST", "/deploy", json={"bundle": str(bundle.resolve()), **options}
            )
    if as_json:
        emit_json(result)
        return
    rollout = result.get("rollout")
    if rollout is None:
        click.echo(f"{result['model']} {result['version']} is active (first version of the model)")
        return
    click.echo(
        f"{rollout['strategy']} rollout of {result['model']} {result['version']} started "
        f"(live: {rollout['live']}); follow it with 'edgedl agent status'"
    )


@click.command()
@click.option("--model", help="The model (needed when the agent serves several).")
@_connection_options
def promote(
    model: str | None,
    agent_url: str | None,
    token: str | None,
    config_path: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Promote the candidate of the running rollout now (ends a shadow rollout)."""
    with _client(agent_url, token, config_path, timeout) as client:
        result = client.request("POST", "/promote", json={"model": model})
    _print_result(result, as_json)


@click.command()
@click.option("--model", help="The model (needed when the agent serves several).")
@_connection_options
def rollback(
    model: str | None,
    agent_url: str | None,
    token: str | None,
    config_path: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Stop the running rollout, or go back to the previous version."""
    with _client(agent_url, token, config_path, timeout) as client:
        result = client.request("POST", "/rollback", json={"model": model})
    _print_result(result, as_json)


@click.command()
@_connection_options
def status(
    agent_url: str | None,
    token: str | None,
    config_path: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Show what each model serves, the rollout in progress and the last decisions."""
    with _client(agent_url, token, config_path, timeout) as client:
        result = client.request("GET", "/status")
    if as_json:
        emit_json(result)
        return
    models = result.get("models", {})
    if not models:
        click.echo("no models")
    for name, m in models.items():
        versions = ", ".join(v["version"] for v in m.get("versions", []))
        click.echo(
            f"{name}: serving {m.get('serving')} (previous {m.get('previous') or '-'}; "
            f"stored {versions or '-'})"
        )
        rollout = m.get("rollout")
        if rollout:
            h = rollout["candidate_health"]
            line = (
                f"  {rollout['strategy']} of {rollout['candidate']}: {h['requests']} requests, "
                f"error rate {h['error_rate']:.1%}, p95 {_ms(h['p95_ms'])}"
            )
            shadow = rollout.get("shadow")
            if shadow:
                agreement = shadow.get("top1_agreement")
                line += (
                    f"; top-1 agreement {'-' if agreement is None else f'{agreement:.1%}'}"
                    f", max abs diff {shadow.get('max_abs_diff')}"
                )
            click.echo(line)
        for event in m.get("history", [])[-5:]:
            click.echo(f"  {_event(event)}")


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    event = result.get("event") or {}
    click.echo(f"{result['model']}: {_event(event)}; serving {result.get('serving')}")


def _event(event: dict[str, Any]) -> str:
    action = str(event.get("action", "?")).replace("_", " ")
    version = event.get("version")
    reason = event.get("reason")
    return f"{action} {version or ''}".strip() + (f" ({reason})" if reason else "")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


__all__ = ["AdminClient", "deploy", "promote", "rollback", "status"]
