"""A lean HTTP/1.1 client on asyncio streams: one keep-alive connection, one request at a time.

A load generator must cost far less per request than the server it measures; a general
client (httpx) spends several times what the agent does per request. This one writes
prepared request bytes and reads the status line, headers and a ``Content-Length`` or
chunked body, nothing more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

from edgedl.errors import UsageError

CONNECTION_ERROR = 0
"""The status recorded when no HTTP answer came (refused, reset, closed mid-answer)."""


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: host and port of an ``http://`` URL."""

    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """The endpoint of ``url`` (port 80 when none is given, the path without its trailing
        slash); :class:`UsageError` unless it is a plain ``http://`` URL with a host."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UsageError(f"URL must look like http://HOST:PORT, not {url!r}")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise UsageError(f"bad port in {url!r}") from exc
        return cls(parts.hostname, port, parts.path.rstrip("/"))

    def request(self, method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
        """The bytes of one keep-alive request (``headers``: extra ``Name: value\\r\\n`` lines)."""
        head = (
            f"{method} {self.base_path}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Length: {len(body)}\r\n{headers}\r\n"
        )
        return head.encode() + body


class Connection:
    """One keep-alive connection; reopened on the next request after the server closed it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send ``request``; return the status and body (status 0 and b"" when none came)."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    self._endpoint.host, self._endpoint.port
                )
            assert self._reader is not None
            self._writer.write(request)
            head = await self._reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, chunked, close = 0, False, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            body = await (self._chunked() if chunked else self._reader.readexactly(length))
            if close:
                self.close()
            return status, body
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.close()
            return CONNECTION_ERROR, b""

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        parts: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self._reader.readexactly(size + 2))
            parts[-1] = parts[-1][:-2]

    def close(self) -> None:
        """Close the socket, if one is open; the next exchange opens a new one."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
