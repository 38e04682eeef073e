"""``POST /v2/labels``: late labels for the predictions the agent answered.

One label::

    POST /v2/labels  {"id": "3f9c2a71-17", "label": 4}          (or "label": [4, 1] for a batch)
    200 {"id": ..., "status": "accepted", "model_name": ..., "model_version": ..., ...}

answers 200 accepted, 409 duplicate, 404 unknown, 410 expired or 400 invalid, always with the
``status`` and a ``message`` saying why. Many labels::

    POST /v2/labels  {"labels": [{"id": ..., "label": ...}, ...]}   (at most 1000)
    200 {"counts": {"accepted": 2, "duplicate": 1, ...}, "results": [{...}, ...]}

answers 200 with one result per label, in order. 404 for everything when the agent keeps no
predictions (``[labels] max_predictions = 0``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgedl.json_body import BodyRefused, read_json_capped

from .labels import HTTP_STATUS, MAX_LABELS_PER_REQUEST, LabelStatus, PredictionLog

#: Largest body of a labels request.
MAX_LABELS_BODY_BYTES = 256 * 1024


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def post_labels(request: Request) -> Response:
    """Match one label or a list of labels (see the module docstring)."""
    log: PredictionLog | None = request.app.state.runtime.predictions
    if log is None:
        return _refuse(404, "labels are off on this agent ([labels] max_predictions = 0)")
    try:
        doc: Any = await read_json_capped(
            request.stream(), MAX_LABELS_BODY_BYTES, "a labels request"
        )
    except BodyRefused as exc:
        return _refuse(exc.status, str(exc))
    if not isinstance(doc, dict):
        return _refuse(400, 'expected {"id": ..., "label": ...} or {"labels": [...]}')
    if "labels" in doc:
        items = doc["labels"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            return _refuse(400, '"labels" must be a list of {"id": ..., "label": ...}')
        if len(items) > MAX_LABELS_PER_REQUEST:
            return _refuse(413, f"at most {MAX_LABELS_PER_REQUEST} labels per request")
        results = [log.label(i.get("id"), i.get("label")) for i in items]
        counts = {str(s): 0 for s in LabelStatus}
        for r in results:
            counts[str(r.status)] += 1
        return JSONResponse({"counts": counts, "results": [r.to_dict() for r in results]})
    if "id" not in doc or "label" not in doc:
        return _refuse(400, 'expected {"id": ..., "label": ...} or {"labels": [...]}')
    result = log.label(doc["id"], doc["label"])
    return JSONResponse(result.to_dict(), status_code=HTTP_STATUS[result.status])


def label_routes() -> list[Route]:
    """The labels route, to mount on the agent's app."""
    return [Route("/v2/labels", post_labels, methods=["POST"])]


__all__ = ["MAX_LABELS_BODY_BYTES", "label_routes", "post_labels"]
