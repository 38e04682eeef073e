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
    POST /v2/labels                             late labels (edgedl.agent.labels_http)
    GET  /metrics                               Prometheus text
    .../v2/systemsharedmemory/...               Triton's system shared memory extension
                                                (:mod:`edgedl.agent.shared_memory_api`)

With label tracking on (``[labels]``, the default) every infer answer (HTTP and gRPC) carries
an ``id``: the request's, or one the agent makes; the predicted classes are remembered under
it (:func:`edgedl.agent.labels.remember`).

Errors are ``{"error": "<what was wrong>"}`` with the status of the
:class:`~edgedl.errors.ServingError` raised (400, 404, 408, 413, 429, 500, 503, 504).

An infer request reserves the memory it will take from the shared budget
(:class:`~edgedl.agent.request_body.RequestLimits`) before its body is read and holds it until
its answer is sent; large bodies are decoded and answers encoded on a worker thread, so the
event loop keeps answering small requests meanwhile.
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from edgedl._version import __version__
from edgedl.errors import ServingError

from .answer import answer, off_loop
from .batcher import ShuttingDown
from .labels import remember
from .labels_http import label_routes
from .metrics import CONTENT_TYPE
from .oip import BadRequest, InferenceRequest, decode_request, encode_response
from .repository import ModelNotFound
from .request_body import RequestLimits, read_body
from .request_budget import JSON_OUTPUT_BYTE_COST, Reservation
from .served import InferenceFailed, Servable, Tensors
from .service import AgentRuntime
from .shared_memory_api import shared_memory_routes
from .telemetry.sampling import offer

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"


def create_app(
    runtime: AgentRuntime,
    extra_routes: Sequence[BaseRoute] = (),
    admin_routes: Sequence[BaseRoute] = (),
    limits: RequestLimits | None = None,
) -> Starlette:
    """The Starlette app serving ``runtime`` (see the module docstring).

    ``limits``: the request limits shared with ``extra_routes``; by default a new set from
    ``runtime.config.server``.
    """
    api = _Api(runtime, limits or RequestLimits.from_config(runtime.config.server))
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
        *shared_memory_routes(runtime),
        *label_routes(),
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
    headers = None
    if exc.status in (429, 503):
        headers = {"Retry-After": "1"}
    elif exc.status == 408:
        headers = {"Connection": "close"}
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


class _Api:
    def __init__(self, runtime: AgentRuntime, limits: RequestLimits) -> None:
        self.runtime = runtime
        self.repository = runtime.repository
        self.limits = limits

    async def server_metadata(self, request: Request) -> Response:
        extensions = ["binary_tensor_data"]
        if self.runtime.shared_memory is not None:
            extensions.append("system_shared_memory")
        return JSONResponse({"name": "edgedl", "version": __version__, "extensions": extensions})

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
        reservation: Reservation | None = None
        answered = False
        try:
            header_length = _header_length(request)
            declared = self.limits.declared_length(request)
            reservation = await self.limits.admit(declared, header_length)
            payload, out_header_length = await self._infer(
                request, model, reservation, declared, header_length
            )
            answered = True
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
            if reservation is not None and not answered:
                self.limits.release(reservation)
        model.finish(started, None)
        assert reservation is not None
        if out_header_length is None:
            return _HeldResponse(payload, self.limits, reservation, media_type="application/json")
        return _HeldResponse(
            payload,
            self.limits,
            reservation,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(out_header_length)},
        )

    async def _infer(
        self,
        request: Request,
        model: Servable,
        reservation: Reservation,
        declared: int | None,
        header_length: int | None,
    ) -> tuple[bytes, int | None]:
        body = await read_body(request, self.limits, reservation, declared)
        decode = functools.partial(
            decode_request,
            body,
            header_length,
            model.input_datatypes,
            self.limits.max_json_object_bytes,
            self.runtime.shared_memory,
        )
        decoded = await off_loop(decode, len(body))
        del body, decode
        outputs = await answer(model, decoded.inputs, decoded.timeout_s)
        remember(self.runtime.predictions, model.name, model.version, decoded, outputs)
        offer(self.runtime.sampler, model.name, model.version, decoded.id, decoded.inputs, outputs)
        decoded.inputs.clear()  # answered: only the outputs are needed from here on
        return await _encode(model, decoded, outputs, reservation, self.runtime)


class _HeldResponse(Response):
    """A response that gives its request's memory back once it is sent (or fails to be)."""

    def __init__(
        self, content: bytes, limits: RequestLimits, reservation: Reservation, **kwargs: Any
    ) -> None:
        super().__init__(content, **kwargs)
        self._limits = limits
        self._reservation = reservation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._limits.release(self._reservation)


def _header_length(request: Request) -> int | None:
    header = request.headers.get(HEADER_LENGTH)
    try:
        return int(header) if header is not None else None
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length is not a number: {header!r}") from None


async def _encode(
    model: Servable,
    decoded: InferenceRequest,
    outputs: Tensors,
    reservation: Reservation,
    runtime: AgentRuntime,
) -> tuple[bytes, int | None]:
    """The answer's body, holding from now on what it needs (the outputs and the text).

    Decoding is over, so this usually gives memory back; more is taken only at once, and a
    budget held by others then answers 503.
    """
    out_bytes = sum(int(getattr(arr, "nbytes", 0)) for arr in outputs.values())
    if decoded.outputs is None:
        binary = decoded.binary_output
    else:
        binary = all(out.binary for out in decoded.outputs)
    reservation.resize(out_bytes * (2 if binary else 1 + JSON_OUTPUT_BYTE_COST))
    encode = functools.partial(
        encode_response, model.name, model.version, decoded, outputs, runtime.shared_memory
    )
    encoded: tuple[bytes, int | None] = await off_loop(encode, out_bytes)
    return encoded


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
