"""``edgedl agent serve``: run the HTTP API with uvicorn, speaking sd_notify, draining on SIGTERM.

Start-up: read the config (file, environment, flags), load and verify every bundle, bind
(HTTP; also a Unix socket when ``server.unix_socket`` is set, and gRPC on the same event
loop when ``server.grpc_port`` is), then send READY=1. On SIGTERM or SIGINT: send
STOPPING=1, answer new requests 503 (gRPC: UNAVAILABLE), wait until the requests in flight
on either API are answered (at most ``server.shutdown_timeout_s``), close, stop the batchers
and exit 0. A second signal closes at once; a third forces the exit.
"""

from __future__ import annotations

import logging
import socket
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
import uvicorn
from starlette.applications import Starlette

from edgedl.errors import EdgeDLError

from .app import create_app
from .config import AgentConfig, ModelConfig, load_config
from .fleet.updater import attach as attach_fleet_updates
from .http_guard import guarded_http_protocol
from .listeners import ListenError, bind_tcp, bind_unix, remove_unix
from .memory_release import limit_malloc_arenas
from .pipeline.http import pipeline_routes
from .pipeline.pipeline_set import PipelineSet
from .request_body import RequestLimits
from .rollout.admin_api import rollout_routes
from .service import AgentRuntime
from .systemd import SystemdNotifier
from .telemetry.service import attach as attach_telemetry

if TYPE_CHECKING:  # grpcio is imported only when the gRPC API is on
    from .oip_grpc.server import GrpcServer

log = logging.getLogger("edgedl.agent")


def build_app(runtime: AgentRuntime, limits: RequestLimits | None = None) -> Starlette:
    """The API with every component's routes (components add theirs here).

    ``limits``: the request limits, shared with the gRPC API when it runs; by default a new
    set from ``runtime.config.server``.
    """
    runtime.admission.admit_pipelines(runtime.config.pipelines)
    pipelines = PipelineSet.from_configs(runtime.config.pipelines)
    telemetry = attach_telemetry(runtime, pipelines)
    admin = rollout_routes(runtime)
    attach_fleet_updates(runtime, telemetry)
    limits = limits or RequestLimits.from_config(runtime.config.server)  # one budget for all
    return create_app(
        runtime,
        extra_routes=pipeline_routes(pipelines, limits),
        admin_routes=admin,
        limits=limits,
    )


class AgentServer(uvicorn.Server):
    """uvicorn's server with a graceful drain and systemd notifications."""

    def __init__(
        self,
        config: uvicorn.Config,
        runtime: AgentRuntime,
        notifier: SystemdNotifier,
        grpc_server: GrpcServer | None = None,
    ) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.notifier = notifier
        self.grpc_server = grpc_server
        self.grpc_error: EdgeDLError | None = None
        self._drain_deadline: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup, then the gRPC server's; a gRPC port that cannot be bound
        stops the agent and is kept in ``grpc_error``."""
        await super().startup(sockets)
        if self.grpc_server is not None and self.started and not self.should_exit:
            try:
                await self.grpc_server.start()
            except EdgeDLError as exc:  # the port could not be bound
                self.grpc_error = exc
                self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop the gRPC server (one second's grace for calls left), then uvicorn's shutdown."""
        if self.grpc_server is not None:
            # The drain already waited for the calls in flight; this bounds any left.
            await self.grpc_server.stop(grace=1.0)
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal starts the drain (no new requests, systemd told it is stopping),
        the second ends it at once, the third forces the exit."""
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
        """uvicorn's tick, plus: announce the agent on the first, pet the systemd watchdog,
        and exit once a drain has no requests in flight or is past its deadline."""
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
        also = ""
        if self.runtime.config.server.unix_socket:
            also += f", unix:{self.runtime.config.server.unix_socket}"
        if self.grpc_server is not None:
            also += f" and gRPC port {self.grpc_server.port}"
        log.info("edgedl agent serving %s on http://%s:%d%s", names, host, port, also)
        self.notifier.ready(f"serving {names} on {host}:{port}{also}")

    def address(self) -> tuple[str, int]:
        """The host and port actually bound (``port = 0`` picks a free one)."""
        for server in self.servers:
            for sock in server.sockets:
                if sock.family != socket.AF_UNIX:
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
        limits = RequestLimits.from_config(config.server)
        grpc_server = None
        if config.server.grpc_port is not None:
            from .oip_grpc.server import GrpcServer

            grpc_server = GrpcServer(runtime, limits, config.server.host, config.server.grpc_port)
        server_config = uvicorn.Config(
            build_app(runtime, limits),
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
        server = AgentServer(server_config, runtime, notifier, grpc_server)
        sockets = _bind(config) if config.server.unix_socket else None
        try:
            server.run(sockets=sockets)
        finally:
            for sock in sockets or ():
                sock.close()
            if config.server.unix_socket:
                remove_unix(config.server.unix_socket)
        if server.grpc_error is not None:
            raise click.ClickException(str(server.grpc_error))
        if not server.started:
            raise click.ClickException(
                f"could not listen on {config.server.host}:{config.server.port} "
                "(is the port in use?)"
            )
    finally:
        runtime.stop(timeout=config.server.shutdown_timeout_s)
        log.info("edgedl agent stopped")


def _bind(config: AgentConfig) -> list[socket.socket]:
    """The TCP socket and the Unix socket of ``[server]``, bound (a clear error otherwise)."""
    server = config.server
    assert server.unix_socket is not None
    try:
        tcp = bind_tcp(server.host, server.port)
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        return [tcp, bind_unix(server.unix_socket)]
    except ListenError as exc:
        tcp.close()
        raise click.ClickException(str(exc)) from None


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
@click.option(
    "--unix-socket",
    default=None,
    type=click.Path(dir_okay=False),
    help="Also serve the HTTP API on this Unix domain socket (for applications on the device).",
)
@click.option(
    "--grpc-port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Also serve the gRPC Open Inference Protocol on this port (default: off).",
)
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
    unix_socket: str | None,
    grpc_port: int | None,
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
    if grpc_port is not None:
        overrides["server.grpc_port"] = grpc_port
    if unix_socket is not None:
        overrides["server.unix_socket"] = unix_socket
    config = load_config(config_path, overrides=overrides)
    extra: dict[str, Any] = {}
    if max_batch_size is not None:
        extra["max_batch_size"] = max_batch_size
    if max_queue_delay_ms is not None:
        extra["max_queue_delay_ms"] = max_queue_delay_ms
    config.models.extend(ModelConfig(path=m, **extra) for m in models)
    run_agent(config)
