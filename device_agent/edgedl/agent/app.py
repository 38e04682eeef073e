"""The agent's HTTP API: Open Inference Protocol v2, Prometheus metrics, admin routes.

Mounting more routes (pipelines, rollout): pass them to :func:`create_app`::

    app = create_app(runtime,
                     extra_routes=[Route("/v2/pipelines/{name}/audio", post_audio, methods=["POST"])],
                     admin_routes=rollout_routes(runtime))

``extra_routes`` are served as they are (prefer paths under ``/v2/``); ``admin_routes`` are
mounted under ``/v2/admin`` and answer only requests carrying
``Authorization: Bearer <server.admin_token>`` (401 otherwise; 403 for every request when no
token is configured). Handlers reach the agent through ``request.app.state.runtime``
(an :class:`~edgedl.agent.service.AgentRuntime`).

Routes::

    GET  /v2                                    server metadata
    GET  /v2/health/live | /v2/health/ready     200, or 503 while loading or shutting down
    GET  /v2/models/{name}[/versions/{v}]       model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer JSON tensors or binary tensor data
    GET  /metrics                               Prometheus text

Errors are ``{"error": "<what was wrong>"}`` with the status of the
:class:`~edgedl.errors.ServingError` raised (400, 404, 413, 429, 500, 503, 504).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from edgedl._version import __version__
from edgedl.errors import ServingError

from .batcher import DeadlineExceeded, ShuttingDown
from .metrics import CONTENT_TYPE
from .oip import BadRequest, decode_request, encode_response
from .repository import ModelNotFound
from .served import InferenceFailed, Servable, ServedModel, Tensors
from .service import AgentRuntime

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"


class PayloadTooLarge(ServingError):
    """The request body is larger than ``server.max_request_bytes``."""

    status = 413
    kind = "bad_input"


def create_app(
    runtime: AgentRuntime,
    extra_routes: Sequence[BaseRoute] = (),
    admin_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The Starlette app serving ``runtime`` (see the module docstring)."""
    api = _Api(runtime)
    routes: list[BaseRoute] = [
        Route("/v2", api.server_metadata, methods=["GET"]),
        Route("/v2/health/live", api.live, methods=["GET"]),
        Route("/v2/health/ready", api.ready, methods=["GET"]),
        Route("/v2/models/{name}", api.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", api.model_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", api.infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}", api.model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", api.model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/infer", api.infer, methods=["POST"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *extra_routes,
    ]
    if admin_routes:
        token = runtime.config.server.resolved_admin_token()
        routes.append(Mount("/v2/admin", app=_RequireToken(Router(list(admin_routes)), token)))
    app = Starlette(routes=routes)
    app.state.runtime = runtime
    return app


def error_response(exc: ServingError) -> JSONResponse:
    """``{"error": message}`` with the error's HTTP status."""
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


class _Api:
    def __init__(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        self.repository = runtime.repository
        self.max_bytes = runtime.config.server.max_request_bytes

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(
            {"name": "edgedl", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        ready = self.runtime.ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            model = self.repository.get(name, request.path_params.get("version"))
            versions = self.repository.versions(name)
        except ModelNotFound as exc:
            return error_response(exc)
        return JSONResponse(model.metadata(versions))

    async def model_ready(self, request: Request) -> Response:
        try:
            model = self.repository.get(
                request.path_params["name"], request.path_params.get("version")
            )
        except ModelNotFound as exc:
            return error_response(exc)
        ready = model.ready and not self.runtime.draining
        return JSONResponse(
            {"name": model.name, "version": model.version, "ready": ready},
            status_code=200 if ready else 503,
        )

    async def metrics(self, request: Request) -> Response:
        return Response(self.runtime.metrics.exposition(), media_type=CONTENT_TYPE)

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        params = request.path_params
        try:
            model = self.repository.resolve(params["name"], params.get("version"))
        except ModelNotFound as exc:
            return error_response(exc)
        if self.runtime.draining:
            stopping = ShuttingDown("the agent is shutting down and takes no new requests")
            model.finish(started, stopping)
            return error_response(stopping)
        self.runtime.in_flight += 1
        try:
            payload, header_length = await self._infer(request, model)
        except ServingError as exc:
            model.finish(started, exc)
            return error_response(exc)
        except Exception as exc:  # a bug, not the client's fault: answer 500 and keep serving
            log.exception("infer on %s failed", params["name"])
            failed = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            model.finish(started, failed)
            return error_response(failed)
        finally:
            self.runtime.in_flight -= 1
        model.finish(started, None)
        if header_length is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(header_length)},
        )

    async def _infer(self, request: Request, model: Servable) -> tuple[bytes, int | None]:
        body = await self._body(request)
        header = request.headers.get(HEADER_LENGTH)
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise BadRequest(
                f"Inference-Header-Content-Length is not a number: {header!r}"
            ) from None
        decoded = decode_request(body, header_length, model.input_datatypes)
        wait = decoded.timeout_s or model_timeout(model)
        if isinstance(model, ServedModel):
            outputs = await _answer(model.submit_async(decoded.inputs, decoded.timeout_s), wait)
        else:  # a rollout's split or shadow pair: a thread-side future
            future = model.submit(decoded.inputs, decoded.timeout_s)
            try:
                outputs = await asyncio.wait_for(asyncio.wrap_future(future), wait)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no answer within {wait * 1000:.0f} ms") from None
        return encode_response(model.name, model.version, decoded, outputs)

    async def _body(self, request: Request) -> bytes:
        limit = self.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(
                f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes "
                "(server.max_request_bytes)"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)"
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            body = _decompress(body, encoding, limit)
        elif encoding != "identity":
            raise BadRequest(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
        return body


async def _answer(future: asyncio.Future[Tensors], wait: float) -> Tensors:
    """Await a batcher's asyncio future for at most ``wait`` seconds.

    A timer that fails the future, not :func:`asyncio.wait_for`, which wraps it in one more
    future and callback per request. A request still queued when it fires is then skipped.
    """
    timer = future.get_loop().call_later(wait, _expire, future, wait)
    try:
        return await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[Tensors], wait: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no answer within {wait * 1000:.0f} ms"))


def model_timeout(model: Servable) -> float:
    """The default deadline of a servable's requests, in seconds."""
    config = getattr(model, "config", None)
    return float(getattr(config, "timeout_ms", 10_000.0)) / 1000.0


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} data: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"decompressed request body exceeds the limit of {limit} bytes (server.max_request_bytes)"
        )
    return data


class _RequireToken:
    """An ASGI wrapper answering 401/403 unless the request carries the admin token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response: Any = None
        if not self.token:
            response = JSONResponse(
                {"error": "the admin API is disabled: set server.admin_token"}, status_code=403
            )
        else:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response = JSONResponse(
                    {"error": "missing or wrong admin token (Authorization: Bearer ...)"},
                    status_code=401,
                )
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
