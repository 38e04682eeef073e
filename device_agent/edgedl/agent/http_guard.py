"""uvicorn's HTTP protocols with a deadline for request headers.

uvicorn times out idle keep-alive connections, but a connection that sends nothing, or sends
its headers a byte at a time, is kept forever: a few hundred of them exhaust a small device's
sockets and memory. Here every connection must complete a request's headers within
``header_timeout_s`` of opening or of the request's first byte; otherwise it gets
``408 Request Timeout`` (when no answer is being written on it) and is closed.

:func:`guarded_http_protocol` picks httptools when it is installed (as uvicorn's ``auto``
does) and h11 otherwise, and returns a protocol class to pass as ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

_TIMEOUT_BODY = b'{"error": "request headers not received in time"}'
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class _HeaderDeadline:
    """The timer shared by both protocols; ``header_timeout_s`` is set by the factory."""

    header_timeout_s = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any

    def _arm_header_deadline(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_TIMEOUT_RESPONSE)
        self.transport.close()


class _GuardedH11(_HeaderDeadline, H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm_header_deadline()  # headers complete (or the connection is done)
        elif self.timeout_keep_alive_task is None:
            self._arm_header_deadline()  # a new request has started arriving

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        super().connection_lost(exc)


def _guarded_httptools() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None

    class _GuardedHttpTools(_HeaderDeadline, HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_deadline()

        def on_headers_complete(self) -> None:
            self._disarm_header_deadline()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_deadline()
            super().connection_lost(exc)

    return _GuardedHttpTools


def guarded_http_protocol(header_timeout_s: float, prefer: str = "auto") -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class closing connections whose headers are late.

    ``prefer``: ``"auto"`` (httptools when installed), ``"httptools"`` or ``"h11"``.
    """
    base: type[asyncio.Protocol] | None = None
    if prefer in ("auto", "httptools"):
        base = _guarded_httptools()
        if base is None and prefer == "httptools":
            raise ImportError("httptools is not installed")
    if base is None:
        base = _GuardedH11
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s})
