"""The agent's gRPC listener: a ``grpc.aio`` server on the HTTP server's event loop.

Sharing the loop is what lets both APIs share one request memory budget (which lives on the
loop's thread, without a lock) and the batchers' asyncio futures. :class:`GrpcServer` is
started after uvicorn has bound its sockets and stopped before uvicorn closes them.
"""

from __future__ import annotations

import logging

from grpc import aio

from edgedl.errors import EdgeDLError

from ..request_body import RequestLimits
from ..service import AgentRuntime
from .service import InferenceService

log = logging.getLogger(__name__)


class GrpcBindError(EdgeDLError):
    """The gRPC port could not be bound."""


class GrpcServer:
    """``inference.GRPCInferenceService`` on ``host:port`` (``port`` 0 picks a free one)."""

    def __init__(self, runtime: AgentRuntime, limits: RequestLimits, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._service = InferenceService(runtime, limits)
        self._max_message = runtime.config.server.max_request_bytes
        self._server: aio.Server | None = None

    async def start(self) -> int:
        """Bind and start answering on the running loop; returns the bound port.

        Raises :class:`GrpcBindError` when the address cannot be bound.
        """
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_message),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a shared port
            ]
        )
        server.add_generic_rpc_handlers((self._service.handler(),))
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GrpcBindError(
                f"could not listen for gRPC on {address} (is the port in use?): {exc}"
            ) from exc
        if bound == 0:  # older grpcio reports a failed bind this way
            raise GrpcBindError(f"could not listen for gRPC on {address} (is the port in use?)")
        await server.start()
        self._server = server
        self.port = int(bound)
        log.info("gRPC Open Inference Protocol on %s:%d", self.host, bound)
        return self.port

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let those in flight finish for at most ``grace`` seconds, close."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
