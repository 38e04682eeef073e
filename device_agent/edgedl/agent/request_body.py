"""Reading a request body within the agent's limits: size, memory budget and time.

:class:`RequestLimits` holds what ``[server]`` configures; :meth:`RequestLimits.admit` reserves
a request's memory from the shared :class:`~edgedl.agent.request_budget.MemoryBudget` before
anything is read, and :func:`read_body` reads (and decompresses) the body, growing the
reservation when the size was not declared, and gives up with 408 when the body does not
arrive within ``server.body_timeout_s``.
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request

from edgedl.errors import ServingError

from .memory_release import release_free_memory
from .oip import BadRequest
from .request_budget import (
    JSON_BYTE_COST,
    MIB,
    MemoryBudget,
    PayloadTooLarge,
    Reservation,
    request_cost,
)
from .serving_config import ServerConfig

_INFLATE_STEP = 1 * MIB
_TRIM_AFTER = 8 * MIB  # give freed memory back to the system after requests this large


class BodyTimeout(ServingError):
    """The client did not send its body within ``server.body_timeout_s``."""

    status = 408
    kind = "bad_input"


class ClientGone(ServingError):
    """The client hung up before its body was read; nobody reads the answer."""

    status = 400
    kind = "bad_input"


@dataclass
class RequestLimits:
    """The limits every route that reads a body applies; one shared memory budget."""

    max_request_bytes: int
    max_json_object_bytes: int
    body_timeout_s: float
    budget: MemoryBudget

    @classmethod
    def from_config(cls, server: ServerConfig) -> RequestLimits:
        """The limits ``[server]`` configures, with a new memory budget."""
        return cls(
            max_request_bytes=server.max_request_bytes,
            max_json_object_bytes=server.max_json_object_bytes,
            body_timeout_s=server.body_timeout_s,
            budget=MemoryBudget(server.request_memory_bytes, server.request_memory_wait_s),
        )

    def declared_length(self, request: Request) -> int | None:
        """The body's Content-Length; 413 at once when it is over ``max_request_bytes``."""
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            return None
        length = int(declared)
        if length > self.max_request_bytes:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of "
                f"{self.max_request_bytes} bytes (server.max_request_bytes)"
            )
        return length

    async def admit(self, length: int | None, json_bytes: int | None = None) -> Reservation:
        """Reserve the memory of a body of ``length`` bytes, ``json_bytes`` of them JSON.

        ``json_bytes`` ``None``: all of it is JSON; a body of unknown length reserves nothing
        yet (:func:`read_body` grows the reservation as it arrives).
        """
        size = length or 0
        json_part = size if json_bytes is None else min(json_bytes, size)
        cost = request_cost(json_part, size - json_part, self.max_json_object_bytes)
        what = f"a request of {size} bytes" if length is not None else "a request"
        return await self.budget.reserve(cost, what)

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back; after a large one, return freed memory to the system."""
        if reservation.release() >= _TRIM_AFTER:
            loop = asyncio.get_running_loop()
            loop.run_in_executor(None, release_free_memory)


async def read_body(
    request: Request,
    limits: RequestLimits,
    reservation: Reservation,
    declared: int | None,
    cost_per_byte: int = JSON_BYTE_COST,
) -> bytes:
    """The whole body, decompressed (gzip, deflate), within the size, memory and time limits.

    Raises :class:`PayloadTooLarge` (413), :class:`~edgedl.agent.request_budget.MemoryBusy`
    (503) when an undeclared or compressed body outgrows the budget, :class:`BodyTimeout`
    (408) and :class:`ClientGone`; an unknown ``Content-Encoding`` is a 400.
    """
    task = asyncio.current_task()
    expired: list[bool] = []
    timer = None
    if task is not None:
        timer = asyncio.get_running_loop().call_later(
            limits.body_timeout_s, functools.partial(_expire, task, expired)
        )
    limit = limits.max_request_bytes
    body = _Body(declared)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {limit} bytes (server.max_request_bytes)"
                )
            if declared is None:
                reservation.grow(cost_per_byte * len(chunk))
            body.add(chunk)
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None:
            uncancel()
        raise BodyTimeout(
            f"the request body did not arrive within {limits.body_timeout_s:g} s "
            f"({size} bytes received; server.body_timeout_s)"
        ) from None
    except ClientDisconnect:
        raise ClientGone("the client closed the connection while sending its body") from None
    finally:
        if timer is not None:
            timer.cancel()
    whole = body.whole()
    del body
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        return _decompress(whole, encoding, limit, reservation, cost_per_byte)
    if encoding != "identity":
        raise BadRequest(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    return whole


class _Body:
    """A body arriving in chunks: written into one buffer of its declared length as they come
    (so the body is never held twice, as joining the chunks at the end would), or joined when
    the length is not known."""

    def __init__(self, declared: int | None) -> None:
        self._buffer = bytearray(declared) if declared else None
        self._size = 0
        self._chunks: list[bytes] = []

    def add(self, chunk: bytes) -> None:
        end = self._size + len(chunk)
        if self._buffer is not None and end <= len(self._buffer):
            self._buffer[self._size : end] = chunk
        else:
            self._chunks.append(chunk)
        self._size = end

    def whole(self) -> bytes:
        if self._buffer is None:
            return b"".join(self._chunks)
        if self._chunks or self._size != len(self._buffer):  # not the declared length
            raise BadRequest(
                f"the body holds {self._size} bytes, not its Content-Length of {len(self._buffer)}"
            )
        return self._buffer  # type: ignore[return-value]  # a bytearray reads like bytes


def _expire(task: asyncio.Task[object], expired: list[bool]) -> None:
    expired.append(True)
    task.cancel()


def _decompress(
    body: bytes, encoding: str, limit: int, reservation: Reservation, cost_per_byte: int
) -> bytes:
    """Inflate step by step, reserving memory for what comes out before keeping it."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    size = 0
    pending = body
    try:
        while True:
            piece = inflater.decompress(pending, _INFLATE_STEP)
            pending = inflater.unconsumed_tail
            if piece:
                size += len(piece)
                if size > limit:
                    raise PayloadTooLarge(
                        f"decompressed request body exceeds the limit of {limit} bytes "
                        "(server.max_request_bytes)"
                    )
                reservation.grow(cost_per_byte * len(piece))
                parts.append(piece)
            elif not pending:
                break
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {encoding} data: {exc}") from exc
    return b"".join(parts)
