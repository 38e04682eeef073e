"""``POST /api/v1/labels``: late labels sent to the collector instead of to the device.

Needs ``Authorization: Bearer <[http] admin_token>`` like the collector's other write
actions (401 without it, 403 when no token is configured). One label::

    POST /api/v1/labels
    {"fleet": "factory-7", "device": "pi-7", "id": "3f9c2a71-17", "label": 4,
     "model": "digits", "version": "2", "predicted": 9}
    200 {"id": ..., "status": "accepted", "message": "counted", "fleet": ..., ...}

``model``, ``version`` and ``predicted`` may be left out when the id names a stored sample.
Answers 200 accepted, 409 duplicate, 404 unknown or 400 invalid, always with ``status`` and
a ``message`` saying why (:mod:`.direct_labels`). Many labels::

    POST /api/v1/labels  {"labels": [{...}, ...]}        (at most 1000)
    200 {"counts": {"accepted": 2, "duplicate": 1, ...}, "results": [{...}, ...]}
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgedl.json_body import BodyRefused, read_json_capped

from .auth import admin_refusal
from .direct_labels import HTTP_STATUS, MAX_LABELS_PER_REQUEST, DirectLabelResult, DirectLabels
from .jsonsafe import SafeJSONResponse as JSONResponse

if TYPE_CHECKING:
    from .service import Collector

log = logging.getLogger("edgedl.collector.labels")

#: Largest body of a labels request.
MAX_LABELS_BODY_BYTES = 512 * 1024


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def label_routes(collector: Collector) -> list[Route]:
    """The labels route of the collector's app."""
    book = DirectLabels(collector.store)

    def count(items: list[Any]) -> list[DirectLabelResult]:
        results = [book.label(item) for item in items]
        touched: set[tuple[str, str, str, str]] = set()
        for r in results:
            if r.status == "accepted" and r.fleet and r.device and r.model and r.version:
                touched.add((r.fleet, r.device, r.model, r.version))
        try:
            collector.accuracy.judge(touched)
        except Exception:  # the labels are committed; alerts are derived
            log.exception("judging accuracy after labels sent to the collector failed")
        return results

    async def post_labels(request: Request) -> Response:
        refused = admin_refusal(request, collector.config.http.admin_token)
        if refused is not None:
            return refused
        try:
            doc: Any = await read_json_capped(
                request.stream(), MAX_LABELS_BODY_BYTES, "a labels request"
            )
        except BodyRefused as exc:
            return _refuse(exc.status, str(exc))
        if isinstance(doc, dict) and "labels" in doc:
            items = doc["labels"]
            if not isinstance(items, list):
                return _refuse(400, '"labels" must be a list of label objects')
            if len(items) > MAX_LABELS_PER_REQUEST:
                return _refuse(413, f"at most {MAX_LABELS_PER_REQUEST} labels per request")
            results = await run_in_threadpool(count, items)
            counts = dict.fromkeys(HTTP_STATUS, 0)
            for r in results:
                counts[r.status] += 1
            return JSONResponse({"counts": counts, "results": [r.to_dict() for r in results]})
        if not isinstance(doc, dict):
            return _refuse(400, 'expected {"fleet", "device", "id", "label", ...} or {"labels": [...]}')  # fmt: skip
        (result,) = await run_in_threadpool(count, [doc])
        return JSONResponse(result.to_dict(), status_code=HTTP_STATUS[result.status])

    return [Route("/api/v1/labels", post_labels, methods=["POST"])]


__all__ = ["MAX_LABELS_BODY_BYTES", "label_routes"]
