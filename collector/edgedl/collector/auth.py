"""Who may use the collector's write APIs: the holder of ``[http] admin_token``."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from .jsonsafe import SafeJSONResponse as JSONResponse


def admin_refusal(request: Request, token: str | None) -> JSONResponse | None:
    """Why a write action is refused (403 without a configured token, 401 without the right
    ``Authorization: Bearer`` header), or None when it is allowed."""
    if not token:
        return JSONResponse({"error": "write actions are off: set [http] admin_token"}, 403)
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        message = "needs the header Authorization: Bearer <[http] admin_token>"
        return JSONResponse({"error": message}, 401)
    return None


__all__ = ["admin_refusal"]
