"""``inference.GRPCInferenceService``: the gRPC RPCs translated to the agent's served models.

The same models, batchers, request memory budget, metrics and errors as the HTTP API; only
the protocol differs. RPCs::

    ServerLive, ServerReady                   live / ready (false while loading or draining)
    ModelReady, ModelMetadata                 per model (and version)
    ModelInfer                                raw_input_contents or typed contents, or
                                              tensors in shared memory regions
    ServerMetadata                            name "edgedl" and the agent's version
    SystemSharedMemoryRegister, ...Unregister, ...Status
                                              Triton's system shared memory extension, when
                                              server.shared_memory is on (the regions are
                                              the HTTP API's too: runtime.shared_memory)

Errors end the call with a status code and the same message the HTTP API would give:

=========================  =====================================================
``INVALID_ARGUMENT``       bad shape, datatype, values, parameters (HTTP 400)
``NOT_FOUND``              unknown model or version (404)
``RESOURCE_EXHAUSTED``     over the memory budget or ``max_request_bytes`` (413),
                           budget held by others (503), model queue full (429)
``DEADLINE_EXCEEDED``      no answer within the request's deadline (504)
``UNAVAILABLE``            the agent is shutting down (503)
``INTERNAL``               the model raised (500)
=========================  =====================================================

A call's deadline (``grpc-timeout``, ``client_timeout`` in tritonclient) shortens the model's
``timeout_ms`` like the ``timeout`` parameter does. A ``ModelInfer`` message reaches the
handler whole (gRPC bounds it by ``server.max_request_bytes``); before it is parsed it
reserves :data:`GRPC_BYTE_COST` bytes per byte from the shared budget, and once the outputs
are known it holds what its answer needs until the answer is written.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from edgedl._version import __version__
from edgedl.errors import ServingError

from ..answer import answer, model_timeout, off_loop
from ..batcher import DeadlineExceeded, QueueFull, ShuttingDown
from ..labels import remember
from ..oip import BadRequest, InferenceRequest, shared
from ..repository import ModelNotFound
from ..request_body import ClientGone, RequestLimits
from ..request_budget import JSON_OUTPUT_BYTE_COST, MemoryBusy, PayloadTooLarge, Reservation
from ..served import InferenceFailed, Servable, Tensors
from ..service import AgentRuntime
from ..shared_memory import SharedMemoryRegions
from ..telemetry.sampling import offer
from . import messages
from .tensors import decode_infer_request, encode_infer_response

log = logging.getLogger(__name__)

# What a ModelInfer message costs per byte: the message as received, its parsed copy, the raw
# blobs taken out of it (the arrays are views of those) and one copy on the way to the model.
GRPC_BYTE_COST = 4

_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(error: ServingError) -> grpc.StatusCode:
    """The gRPC status code of an agent error (see the module docstring)."""
    if isinstance(error, (MemoryBusy, PayloadTooLarge, QueueFull)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE
    return _CODES.get(error.status, grpc.StatusCode.INTERNAL)


class InferenceService:
    """The RPCs of ``inference.GRPCInferenceService`` over a running agent."""

    def __init__(self, runtime: AgentRuntime, limits: RequestLimits) -> None:
        self.runtime = runtime
        self.repository = runtime.repository
        self.limits = limits
        self.regions = runtime.shared_memory

    def handler(self) -> grpc.GenericRpcHandler:
        """The handler to add to a ``grpc.aio`` server."""
        unary = grpc.unary_unary_rpc_method_handler
        methods = {
            "ServerLive": _typed(self.server_live, "ServerLiveRequest"),
            "ServerReady": _typed(self.server_ready, "ServerReadyRequest"),
            "ModelReady": _typed(self.model_ready, "ModelReadyRequest"),
            "ServerMetadata": _typed(self.server_metadata, "ServerMetadataRequest"),
            "ModelMetadata": _typed(self.model_metadata, "ModelMetadataRequest"),
            # bytes in, bytes out: the budget is reserved before the message is parsed
            "ModelInfer": unary(self.model_infer),
            "SystemSharedMemoryRegister": _typed(
                self.shm_register, "SystemSharedMemoryRegisterRequest"
            ),
            "SystemSharedMemoryUnregister": _typed(
                self.shm_unregister, "SystemSharedMemoryUnregisterRequest"
            ),
            "SystemSharedMemoryStatus": _typed(self.shm_status, "SystemSharedMemoryStatusRequest"),
        }
        return grpc.method_handlers_generic_handler(messages.SERVICE, methods)

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``ServerLive``: always live while the process answers."""
        return messages.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``ServerReady``: the agent's readiness, false while loading or draining."""
        return messages.ServerReadyResponse(ready=self.runtime.ready)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``ServerMetadata``: the name ``edgedl`` and the agent's version."""
        return messages.ServerMetadataResponse(name="edgedl", version=__version__)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``ModelReady``: the model (or version) is loaded and the agent is not draining;
        ``NOT_FOUND`` for an unknown one."""
        try:
            model = self.repository.get(request.name, request.version or None)
        except ModelNotFound as exc:
            await context.abort(status_code(exc), str(exc))
        ready = model.ready and not self.runtime.draining
        return messages.ModelReadyResponse(ready=ready)

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``ModelMetadata``: the model's versions, platform and input and output tensors,
        as the HTTP API's model metadata gives them."""
        try:
            model = self.repository.get(request.name, request.version or None)
            versions = self.repository.versions(request.name)
        except ModelNotFound as exc:
            await context.abort(status_code(exc), str(exc))
        meta = model.metadata(versions)
        response = messages.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for key in ("inputs", "outputs"):
            for tensor in meta[key]:
                getattr(response, key).add(
                    name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
                )
        return response

    async def shm_register(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``SystemSharedMemoryRegister``: map the named region into the regions shared
        with the HTTP API; ``INVALID_ARGUMENT`` when shared memory is off or the region is bad."""
        try:
            self._shm().register(request.name, request.key, request.offset, request.byte_size)
        except ServingError as exc:
            await context.abort(status_code(exc), str(exc))
        return messages.SystemSharedMemoryRegisterResponse()

    async def shm_unregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``SystemSharedMemoryUnregister``: unmap the named region (all of them when the
        name is empty)."""
        try:
            self._shm().unregister(request.name)
        except ServingError as exc:
            await context.abort(status_code(exc), str(exc))
        return messages.SystemSharedMemoryUnregisterResponse()

    async def shm_status(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """``SystemSharedMemoryStatus``: the registered regions (or the named one) with their
        keys, offsets and sizes."""
        try:
            regions = self._shm().status(request.name)
        except ServingError as exc:
            await context.abort(status_code(exc), str(exc))
        response = messages.SystemSharedMemoryStatusResponse()
        for region in regions:
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    def _shm(self) -> SharedMemoryRegions:
        return shared(self.regions)

    async def model_infer(self, message: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """``ModelInfer`` on the raw message: reserve the budget before parsing, run the model
        under the call's deadline, and end the call with the error's status code on failure."""
        started = time.perf_counter()
        model: Servable | None = None
        reservation: Reservation | None = None
        self.runtime.in_flight += 1
        try:
            reservation = await self.limits.budget.reserve(
                GRPC_BYTE_COST * len(message), f"a gRPC request of {len(message)} bytes"
            )
            request = await off_loop(functools.partial(_parse, message), len(message))
            model = self.repository.resolve(request.model_name, request.model_version or None)
            if self.runtime.draining:
                raise ShuttingDown("the agent is shutting down and takes no new requests")
            decode = functools.partial(
                decode_infer_request, request, model.input_datatypes, self.regions
            )
            decoded = await off_loop(decode, len(message))
            del request, decode
            outputs = await answer(model, decoded.inputs, _deadline(decoded, model, context))
            remember(self.runtime.predictions, model.name, model.version, decoded, outputs)
            offer(
                self.runtime.sampler, model.name, model.version, decoded.id, decoded.inputs, outputs
            )
            encoded: bytes = await self._encode(model, decoded, outputs, reservation)
        except ServingError as exc:
            if model is not None:
                model.finish(started, exc)
            await context.abort(status_code(exc), str(exc))
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            if model is not None:
                remaining = context.time_remaining()
                late = remaining is not None and remaining <= 0
                model.finish(started, DeadlineExceeded("deadline") if late else ClientGone("gone"))
            raise
        except Exception as exc:  # a bug, not the client's fault: INTERNAL and keep serving
            log.exception("gRPC ModelInfer failed")
            failed = InferenceFailed(f"internal error: {type(exc).__name__}: {exc}")
            if model is not None:
                model.finish(started, failed)
            await context.abort(grpc.StatusCode.INTERNAL, str(failed))
        finally:
            self.runtime.in_flight -= 1
            if reservation is not None:
                self.limits.release(reservation)
        assert model is not None  # every failure above ended the call
        model.finish(started, None)
        return encoded

    async def _encode(
        self, model: Servable, decoded: InferenceRequest, outputs: Tensors, reservation: Reservation
    ) -> bytes:
        """The answer's bytes, holding from now on what it needs (inputs, outputs, message)."""
        out_bytes = sum(int(getattr(arr, "nbytes", 0)) for arr in outputs.values())
        in_bytes = sum(int(arr.nbytes) for arr in decoded.inputs.values())
        per_byte = 2 if decoded.binary_output else 2 + JSON_OUTPUT_BYTE_COST
        reservation.resize(in_bytes + out_bytes * per_byte)
        encode = functools.partial(
            _serialize, model.name, model.version, decoded, outputs, self.regions
        )
        encoded: bytes = await off_loop(encode, out_bytes)
        return encoded


def _typed(
    method: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], request: str
) -> grpc.RpcMethodHandler:
    """A unary handler that parses ``request`` messages and serialises its answers."""
    return grpc.unary_unary_rpc_method_handler(
        method,
        request_deserializer=messages.message_class(request).FromString,
        response_serializer=_to_bytes,
    )


def _to_bytes(message: Any) -> bytes:
    serialized: bytes = message.SerializeToString()
    return serialized


def _parse(message: bytes) -> Any:
    try:
        return messages.ModelInferRequest.FromString(message)
    except DecodeError as exc:
        raise BadRequest(f"the message is not a ModelInferRequest: {exc}") from exc


def _serialize(
    name: str,
    version: str,
    decoded: InferenceRequest,
    outputs: Tensors,
    regions: SharedMemoryRegions | None,
) -> bytes:
    return _to_bytes(encode_infer_response(name, version, decoded, outputs, regions))


def _deadline(
    decoded: InferenceRequest, model: Servable, context: grpc.aio.ServicerContext
) -> float:
    """The request's deadline in seconds: its parameter or the model's, cut by the call's."""
    wait = decoded.timeout_s or model_timeout(model)
    remaining = context.time_remaining()
    return wait if remaining is None else max(min(wait, remaining), 1e-3)
