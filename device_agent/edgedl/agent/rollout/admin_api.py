"""The admin API of rollouts, mounted under ``/v2/admin`` behind the admin token.

::

    POST /v2/admin/deploy     {"bundle": "/path/on/device", "strategy": "canary", "share": 0.1, ...}
                              or a bundle .tar as the body (Content-Type: application/x-tar)
                              with the options as query parameters (?strategy=canary&share=0.1)
    POST /v2/admin/promote    {"model": "digits"}   (the model may be left out when one is served)
    POST /v2/admin/rollback   {"model": "digits"}
    GET  /v2/admin/status

Answers are JSON; errors are ``{"error": "..."}`` with 400 (bad options), 409 (a rollout is
already running, nothing to roll back), 413 (upload too large), 422 (the bundle is refused:
not found, fails its sha256, does not load) or 503 (no writable store). The app's token
check (:func:`edgedl.agent.app.create_app`) runs before any of these handlers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edgedl.errors import BundleError, EdgeDLError, RolloutError, RuntimeUnavailableError

from .config import DeployOptions
from .rollouts import Rollouts
from .store import ModelStore

if TYPE_CHECKING:
    from ..service import AgentRuntime

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 1024
TAR_TYPES = ("application/x-tar", "application/tar", "application/octet-stream")


def rollout_routes(runtime: AgentRuntime) -> list[BaseRoute]:
    """Set up the store and rollouts of a running agent; return the admin routes.

    The :class:`Rollouts` are registered as a component of ``runtime`` (started at once when
    the runtime runs: the configured models are adopted into the store and each model serves
    its store's active version). When the store directory cannot be written, rollouts are
    off, the agent serves its configured models, and the admin routes answer 503 saying why.
    Without an admin token (``server.admin_token``) rollouts are off and the store untouched.
    """
    store_config = runtime.config.store
    no_token = "the admin API is disabled: set server.admin_token"
    fleet_updates = runtime.config.fleet.updates
    if not runtime.config.server.resolved_admin_token() and not fleet_updates:
        # Without a token nobody can deploy: leave the store (and the disk) alone.
        return admin_routes(None, no_token)
    problem = _writable_problem(Path(store_config.path))
    if problem is not None:
        log.warning("rollouts are off: %s", problem)
        return admin_routes(None, problem)
    rollouts = Rollouts(
        ModelStore(store_config.path, keep=store_config.keep, admit=runtime.admission.admit),
        runtime.repository,
        runtime.load_model,
        runtime.config.rollout,
    )
    runtime.add_component(rollouts)
    runtime.rollouts = rollouts  # fleet updates deploy through it too
    if not runtime.config.server.resolved_admin_token():
        return admin_routes(None, no_token)
    return admin_routes(rollouts)


def admin_routes(rollouts: Rollouts | None, disabled: str | None = None) -> list[BaseRoute]:
    """The admin routes for ``rollouts`` (relative paths: mount them under ``/v2/admin``)."""
    api = _AdminApi(rollouts, disabled)
    return [
        Route("/deploy", api.deploy, methods=["POST"]),
        Route("/promote", api.promote, methods=["POST"]),
        Route("/rollback", api.rollback, methods=["POST"]),
        Route("/status", api.status, methods=["GET"]),
    ]


class _AdminApi:
    def __init__(self, rollouts: Rollouts | None, disabled: str | None) -> None:
        self.rollouts = rollouts
        self.disabled = disabled or "rollouts are not set up on this agent"

    async def deploy(self, request: Request) -> Response:
        rollouts = self.rollouts
        if rollouts is None:
            return _error(503, self.disabled)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        upload: Path | None = None
        try:
            if content_type in TAR_TYPES:
                given: dict[str, Any] = dict(request.query_params)
                upload = await self._receive_upload(request, rollouts)
                bundle: str = str(upload)
            else:
                given = await _json_object(request)
                path = given.pop("bundle", None)
                if not isinstance(path, str) or not path:
                    raise _BadRequest(
                        '"bundle" (a path on the device) is required, or send a bundle .tar '
                        "as the body with Content-Type: application/x-tar"
                    )
                bundle = path
            options = _options(rollouts, given)
            result = await run_in_threadpool(rollouts.deploy, bundle, options)
        except _HttpError as exc:
            return _error(exc.status, str(exc))
        except EdgeDLError as exc:
            return _error(_status(exc), str(exc))
        finally:
            if upload is not None:
                upload.unlink(missing_ok=True)
        return JSONResponse(result)

    async def promote(self, request: Request) -> Response:
        return await self._command(request, "promote")

    async def rollback(self, request: Request) -> Response:
        return await self._command(request, "rollback")

    async def status(self, request: Request) -> Response:
        if self.rollouts is None:
            return _error(503, self.disabled)
        return JSONResponse(await run_in_threadpool(self.rollouts.status))

    async def _command(self, request: Request, action: str) -> Response:
        rollouts = self.rollouts
        if rollouts is None:
            return _error(503, self.disabled)
        try:
            body = await _json_object(request)
            model = body.get("model")
            if model is not None and not isinstance(model, str):
                raise _BadRequest('"model" must be a model name')
            command = rollouts.promote if action == "promote" else rollouts.rollback
            result = await run_in_threadpool(command, model)
        except _HttpError as exc:
            return _error(exc.status, str(exc))
        except EdgeDLError as exc:
            return _error(_status(exc), str(exc))
        return JSONResponse(result)

    async def _receive_upload(self, request: Request, rollouts: Rollouts) -> Path:
        limit = int(rollouts.config.max_upload_mb * 1024 * 1024)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge(f"bundle upload of {int(declared)} bytes exceeds rollout.max_upload_mb")
        incoming = rollouts.store.root / ".uploads"
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="bundle-", suffix=".tar", dir=incoming)
        path = Path(name)
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge("bundle upload exceeds rollout.max_upload_mb")
                    fh.write(chunk)
            if size == 0:
                raise _BadRequest("the upload is empty: send a bundle .tar as the body")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path


class _HttpError(Exception):
    status = 400


class _BadRequest(_HttpError):
    status = 400


class _TooLarge(_HttpError):
    status = 413


def _status(exc: EdgeDLError) -> int:
    if isinstance(exc, RolloutError):
        return 409
    if isinstance(exc, (BundleError, RuntimeUnavailableError)):
        return 422
    return int(getattr(exc, "status", 400))


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_object(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise _TooLarge(f"a JSON body is at most {MAX_JSON_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


def _options(rollouts: Rollouts, given: dict[str, Any]) -> DeployOptions:
    merged = {**rollouts.config.deploy_defaults().model_dump(), **given}
    try:
        return DeployOptions.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "options"
        got = f" (got {err['input']!r})" if "input" in err and key != "options" else ""
        raise _BadRequest(f"{key}: {err['msg']}{got}") from exc


def _writable_problem(path: Path) -> str | None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        return f"the model store {path} is not writable ({exc.strerror}): set store.path"
    return None
