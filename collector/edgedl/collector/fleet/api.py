"""HTTP routes of the fleet: artifacts (with range downloads), rollouts, who runs what.

::

    POST /api/v1/artifacts               a bundle .tar as the body (X-Edgedl-Sha256: its sha256)
    GET  /api/v1/artifacts               published bundles
    GET  /artifacts/{model}/{version}.tar   the bundle, with Range requests (206, 416)
    GET  /api/v1/fleet/models            models, versions, and the devices running each
    GET  /api/v1/fleet/leader            which collector of the group runs the wave controller
    POST /api/v1/rollouts                start a rollout (JSON: model, version, devices, waves...)
    GET  /api/v1/rollouts                every rollout, newest first
    GET  /api/v1/rollouts/{id}           one rollout
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

from edgedl.errors import BundleError, EdgeDLError, FleetError

from ..jsonsafe import SafeJSONResponse as JSONResponse
from .artifacts import receive_upload
from .service import Fleet, rollout_json

SHA256_HEADER = "x-edgedl-sha256"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def fleet_routes(fleet: Fleet) -> list[BaseRoute]:
    """The fleet's routes (absolute paths)."""

    async def publish(request: Request) -> Response:
        limit = int(fleet.config.max_bundle_mb * 1024 * 1024)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return _error(413, f"the bundle is larger than the limit of {limit} bytes")
        try:
            upload, sha256, size = await receive_upload(
                request.stream(), fleet.artifacts.scratch(), limit
            )
        except FleetError as exc:
            return _error(413, str(exc))
        try:
            body = await run_in_threadpool(
                fleet.publish, upload, sha256, size, request.headers.get(SHA256_HEADER)
            )
        except BundleError as exc:  # SignatureError too: not a bundle this fleet takes
            return _error(422, str(exc))
        except FleetError as exc:
            return _error(409, str(exc))
        return JSONResponse(body, status_code=201 if body["created"] else 200)

    def list_artifacts(_request: Request) -> Response:
        return JSONResponse([fleet._artifact_json(r) for r in fleet.records.artifacts()])

    def download(request: Request) -> Response:
        model = request.path_params["model"]
        name = request.path_params["file"]
        path = (
            fleet.artifacts.path(model, name.removesuffix(".tar"))
            if name.endswith(".tar")
            else None
        )
        if path is None:
            return _error(404, f"no published bundle {model}/{name}")
        # Starlette's FileResponse answers Range requests: 206 with Content-Range, 416.
        return FileResponse(path, media_type="application/x-tar", filename=f"{model}-{name}")

    def models(_request: Request) -> Response:
        return JSONResponse(fleet.models())

    async def leader(_request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(fleet.leader))

    async def create(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw or b"{}")
        except json.JSONDecodeError as exc:
            return _error(400, f"not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        try:
            return JSONResponse(
                await run_in_threadpool(fleet.create_rollout, body), status_code=201
            )
        except EdgeDLError as exc:
            status = 409 if "still running" in str(exc) else 422
            return _error(status, str(exc))

    def list_rollouts(_request: Request) -> Response:
        return JSONResponse([rollout_json(r) for r in fleet.records.rollouts()])

    def one(request: Request) -> Response:
        try:
            rid = int(request.path_params["id"])
        except ValueError:
            return _error(404, "rollout ids are numbers")
        row = fleet.records.rollout(rid)
        if row is None:
            return _error(404, f"no rollout {rid}")
        return JSONResponse(rollout_json(row))

    return [
        Route("/api/v1/artifacts", publish, methods=["POST"]),
        Route("/api/v1/artifacts", list_artifacts, methods=["GET"]),
        Route("/artifacts/{model}/{file}", download, methods=["GET", "HEAD"]),
        Route("/api/v1/fleet/models", models),
        Route("/api/v1/fleet/leader", leader),
        Route("/api/v1/rollouts", create, methods=["POST"]),
        Route("/api/v1/rollouts", list_rollouts, methods=["GET"]),
        Route("/api/v1/rollouts/{id}", one),
    ]


def _op(summary: str, status: str = "200", body: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: {"description": "OK", "content": {"application/json": {}}},
            "4XX": {"description": '{"error": "..."}', "content": {"application/json": {}}},
        },
    }
    if body is not None:
        op["requestBody"] = {"content": {body: {}}}
    return op


#: The fleet's paths, merged into the collector's OpenAPI document.
FLEET_OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/artifacts": {
        "post": _op(
            "Publish a bundle .tar (X-Edgedl-Sha256: its sha256); 422 unsigned/untrusted/altered",
            "201",
            "application/x-tar",
        ),
        "get": _op("Published bundles"),
    },
    "/artifacts/{model}/{file}": {
        "get": {
            **_op("Download a published bundle ({version}.tar); Range requests: 206, 416"),
            "parameters": [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}},
                {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
        }
    },
    "/api/v1/fleet/models": {"get": _op("Models, published versions, devices running each")},
    "/api/v1/fleet/leader": {
        "get": _op("The collector that runs the wave controller: leader, address, term, lease")
    },
    "/api/v1/rollouts": {
        "post": _op(
            "Start a rollout: model, version, fleet, devices, strategy, waves, probation_s, gates",
            "201",
            "application/json",
        ),
        "get": _op("Every rollout, newest first: wave, devices, state, reason"),
    },
    "/api/v1/rollouts/{id}": {"get": _op("One rollout")},
}
