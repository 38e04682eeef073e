"""The HTTP routes of the system shared memory extension, as Triton's HTTP API names them.

::

    POST /v2/systemsharedmemory/region/{name}/register    {"key", "offset", "byte_size"}
    POST /v2/systemsharedmemory/region/{name}/unregister
    POST /v2/systemsharedmemory/unregister                every region
    GET  /v2/systemsharedmemory/region/{name}/status      [{"name", "key", "offset", "byte_size"}]
    GET  /v2/systemsharedmemory/status                    every region, the same way

``tritonclient.http``'s ``register_system_shared_memory`` and friends call these. The regions
are the runtime's (:attr:`~edgedl.agent.service.AgentRuntime.shared_memory`), shared with the
gRPC API; with ``server.shared_memory`` off every route answers 400 saying so.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edgedl.errors import ServingError

from .json_tensors import loads
from .oip import BadRequest, shared
from .service import AgentRuntime

MAX_REGISTER_BYTES = 4096  # a register request's JSON


def shared_memory_routes(runtime: AgentRuntime) -> list[BaseRoute]:
    """The extension's routes over ``runtime.shared_memory``."""
    api = _SharedMemoryApi(runtime)
    prefix = "/v2/systemsharedmemory"
    return [
        Route(f"{prefix}/region/{{name}}/register", api.register, methods=["POST"]),
        Route(f"{prefix}/region/{{name}}/unregister", api.unregister, methods=["POST"]),
        Route(f"{prefix}/unregister", api.unregister, methods=["POST"]),
        Route(f"{prefix}/region/{{name}}/status", api.status, methods=["GET"]),
        Route(f"{prefix}/status", api.status, methods=["GET"]),
    ]


class _SharedMemoryApi:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime

    async def register(self, request: Request) -> Response:
        try:
            regions = shared(self.runtime.shared_memory)
            doc = await _register_request(request)
            regions.register(
                request.path_params["name"], doc["key"], doc["offset"], doc["byte_size"]
            )
        except ServingError as exc:
            return _error(exc)
        return JSONResponse({})

    async def unregister(self, request: Request) -> Response:
        try:
            shared(self.runtime.shared_memory).unregister(request.path_params.get("name", ""))
        except ServingError as exc:
            return _error(exc)
        return JSONResponse({})

    async def status(self, request: Request) -> Response:
        try:
            regions = shared(self.runtime.shared_memory).status(request.path_params.get("name", ""))
        except ServingError as exc:
            return _error(exc)
        return JSONResponse(
            [
                {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                for r in regions
            ]
        )


async def _register_request(request: Request) -> dict[str, Any]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_REGISTER_BYTES:
            raise BadRequest(
                f"a register request is a JSON object of at most {MAX_REGISTER_BYTES} bytes"
            )
    try:
        doc = loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"malformed JSON in the register request: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
        raise BadRequest(
            'a register request needs "key" (the shared memory object, like "/input0")'
        )
    offset, size = doc.get("offset", 0), doc.get("byte_size")
    for what, value in (("offset", offset), ("byte_size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f'"{what}" must be an integer >= 0, got {value!r}')
    return {"key": doc["key"], "offset": offset, "byte_size": size}


def _error(exc: ServingError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status)
