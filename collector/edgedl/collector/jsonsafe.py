"""JSON responses that always serialise: non-finite floats become ``null``.

Stored data may hold numbers JSON cannot carry (``inf`` or ``NaN`` in a database written
before the telemetry contract bounded every number, or a ratio of two stored figures that
overflows). Starlette's :class:`~starlette.responses.JSONResponse` refuses them with an
exception, which would turn one stored row into a 500 on every request that shows it.
:class:`SafeJSONResponse` renders the fast way first and, only when that fails, again with
every non-finite float replaced by ``None``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse


def finite_or_none(value: Any) -> Any:
    """``value`` itself, or None when it is a float that is not finite."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sanitise(value: Any) -> Any:
    """A copy of JSON-ready ``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: sanitise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitise(v) for v in value]
    return value


def _dumps(content: Any) -> bytes:
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


class SafeJSONResponse(JSONResponse):
    """A JSON response that never fails on ``inf`` or ``NaN``: it shows them as null."""

    def render(self, content: Any) -> bytes:
        """Compact JSON of ``content``; non-finite floats as ``null``."""
        try:
            return _dumps(content)
        except ValueError:
            return _dumps(sanitise(content))
