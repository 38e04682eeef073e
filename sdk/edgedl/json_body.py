"""Reading a small JSON request body within a byte limit (the labels APIs of agent and collector).

The body is read chunk by chunk and refused as soon as it passes the limit, so a large or
endless body costs at most ``limit`` bytes of memory.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

from .errors import ServingError


class BodyRefused(ServingError):
    """The body is too large (413) or not JSON (400); the message says which."""

    kind = "bad_input"


async def read_json_capped(chunks: AsyncIterable[bytes], limit: int, what: str) -> Any:
    """The JSON document of a body read from ``chunks`` (a request's ``stream()``).

    Raises :class:`BodyRefused` with 413 past ``limit`` bytes ("``what`` holds at most ...")
    and 400 for a body that is not JSON.
    """
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyRefused(f"{what} holds at most {limit} bytes", status=413)
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BodyRefused(f"malformed JSON: {exc}", status=400) from None


__all__ = ["BodyRefused", "read_json_capped"]
