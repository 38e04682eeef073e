"""``edgedl agent serve``: run the HTTP API with uvicorn, speaking sd_notify, draining on SIGTERM.

Start-up: read the config (file, environment, flags), load and verify every bundle, bind,
then send READY=1. On SIGTERM or SIGINT: send STOPPING=1, answer new requests 503, wait until
the requests in flight are answered (at most ``server.shutdown_timeout_s``), close, stop the
batchers and exit 0. A second signal closes at once; a third forces the exit.
"""

from __future__ import annotations

import logging
import time
from types import FrameType
from typing import Any

import click
import uvicorn
from starlette.applications import Starlette

from .app import create_app
from .config import AgentConfig, ModelConfig, load_config
from .fleet.updater import attach as attach_fleet_updates
from .http_guard import guarded_http_protocol
from .memory_release import limit_malloc_arenas
from .pipeline.http import pipeline_routes
from .pipeline.pipeline_set import PipelineSet
from .request_body import RequestLimits
from .rollout.admin_api import rollout_routes
from .service import AgentRuntime
from .systemd import SystemdNotifier
from .telemetry.service import attach as attach_telemetry

log = logging.getLogger("edgedl.agent")


def build_app(runtime: AgentRuntime) -> Starlette:
    """The API with every component's routes (components add theirs here)."""
    runtime.admission.admit_pipelines(runtime.config.pipelines)
    pipelines = PipelineSet.from_configs(runtime.config.pipelines)
    telemetry = attach_telemetry(runtime, pipelines)
    admin = rollout_routes(runtime)
    attach_fleet_updates(runtime, telemetry)
    limits = RequestLimits.from_config(runtime.config.server)  # one memory budget for all
    return create_app(
        runtime,
        extra_routes=pipeline_routes(pipelines, limits),
        admin_routes=admin,
        limits=limits,
    )


class AgentServer(uvicorn.Server):
    """uvicorn's server with a graceful drain and systemd notifications."""

    def __init__(
        self, config: uvicorn.Config, runtime: AgentRuntime, notifier: SystemdNotifier
    ) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.notifier = notifier
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it re-raises the signal after shutdown, which would make the exit
        # status "killed by SIGTERM" instead of 0.
        if self._drain_deadline is None:
            self.runtime.begin_shutdown()
            self._drain_deadline = time.monotonic() + self.runtime.config.server.shutdown_timeout_s
            self.notifier.stopping(f"draining {self.runtime.in_flight} requests")
            log.info("shutting down: finishing %d requests in flight", self.runtime.in_flight)
        elif not self.should_exit:
            self.should_exit = True
        else:
            self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if counter == 0:
            self._announce()
        self.notifier.watchdog()
        draining = self._drain_deadline is not None and not self.should_exit
        if draining and (
            self.runtime.in_flight == 0 or time.monotonic() > (self._drain_deadline or 0.0)
        ):
            self.should_exit = True
        return await super().on_tick(counter)

    def _announce(self) -> None:
        host, port = self.address()
        names = (
            ", ".join(f"{m.name}:{m.version}" for m in self.runtime.repository.models())
            or "no models"
        )
        log.info("edgedl agent serving %s on http://%s:%d", names, host, port)
        self.notifier.ready(f"serving {names} on {host}:{port}")

    def address(self) -> tuple[str, int]:
        """The host and port actually bound (``port = 0`` picks a free one)."""
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                return str(host), int(port)
        return self.config.host, self.config.port


def run_agent(config: AgentConfig) -> None:
    """Load the models, serve until a signal, drain, stop. Blocks."""
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    limit_malloc_arenas()  # before the runtime's threads: fewer heaps to fragment
    notifier = SystemdNotifier()
    notifier.status("loading models")
    runtime = AgentRuntime(config)
    runtime.start()
    try:
        server_config = uvicorn.Config(
            build_app(runtime),
            host=config.server.host,
            port=config.server.port,
            log_level=config.server.log_level,
            access_log=config.server.access_log,
            timeout_graceful_shutdown=int(config.server.shutdown_timeout_s),
            lifespan="off",
            # httptools and uvloop when installed (the agent extra brings them where wheels
            # exist): about twice the requests per second of h11 and asyncio's loop. Either
            # protocol closes connections whose headers are late (server.header_timeout_s).
            http=guarded_http_protocol(config.server.header_timeout_s),
            loop="auto",
        )
        server = AgentServer(server_config, runtime, notifier)
        server.run()
        if not server.started:
            raise click.ClickException(
                f"could not listen on {config.server.host}:{config.server.port} "
                "(is the port in use?)"
            )
    finally:
        runtime.stop(timeout=config.server.shutdown_timeout_s)
        log.info("edgedl agent stopped")


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="agent.toml")
@click.option(
    "--model",
    "models",
    multiple=True,
    type=click.Path(),
    help="A bundle to serve (repeatable; added to the config's [[models]]).",
)
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default 8080; 0 picks a free one).")
@click.option("--max-batch-size", default=None, type=click.IntRange(min=1), help="For --model.")
@click.option(
    "--max-queue-delay-ms", default=None, type=click.FloatRange(min=0), help="For --model."
)
@click.option("--mqtt", default=None, help="Send telemetry to this broker (mqtt:// or mqtts://).")
@click.option("--fleet", default=None, help="Fleet id in telemetry topics.")
@click.option("--device", default=None, help="Device id in telemetry topics.")
@click.option(
    "--telemetry-interval",
    default=None,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per telemetry window (default 60).",
)
def serve(
    config_path: str | None,
    models: tuple[str, ...],
    host: str | None,
    port: int | None,
    max_batch_size: int | None,
    max_queue_delay_ms: float | None,
    mqtt: str | None,
    fleet: str | None,
    device: str | None,
    telemetry_interval: float | None,
) -> None:
    """Serve bundles over the Open Inference Protocol until SIGTERM."""
    overrides: dict[str, Any] = {
        f"telemetry.{key}": value
        for key, value in (
            ("mqtt", mqtt),
            ("fleet", fleet),
            ("device", device),
            ("interval_s", telemetry_interval),
        )
        if value is not None
    }
    if host is not None:
        overrides["server.host"] = host
    if port is not None:
        overrides["server.port"] = port
    config = load_config(config_path, overrides=overrides)
    extra: dict[str, Any] = {}
    if max_batch_size is not None:
        extra["max_batch_size"] = max_batch_size
    if max_queue_delay_ms is not None:
        extra["max_queue_delay_ms"] = max_queue_delay_ms
    config.models.extend(ModelConfig(path=m, **extra) for m in models)
    run_agent(config)
