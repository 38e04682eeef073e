"""HTTP routes for posting audio to the agent's pipelines (mounted by ``edgedl agent serve``).

* ``GET  /v2/pipelines`` — the pipelines and their sample rates.
* ``POST /v2/pipelines/{name}/stream`` — the body is raw s16le mono PCM at the pipeline's
  sample rate, the next chunk of one continuous stream; the answer is the events that chunk
  completed: ``{"pipeline", "events": [{"label", "start", "end", "score"}], "position_s"}``.
  ``?end=true`` ends the stream (the held-back events come out; the next chunk starts a new
  stream at 0 s).
* ``GET  /v2/pipelines/{name}/stats`` — :meth:`Pipeline.stats`.

Each pipeline is one stream: chunks from several clients are heard as one interleaved stream.
Bodies are read within the agent's request limits (size, memory budget, time:
:class:`~edgedl.agent.request_body.RequestLimits`).
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgedl.errors import EdgeDLError, ServingError

from ..request_body import RequestLimits, read_body
from ..request_budget import BINARY_BYTE_COST
from .pipeline_set import PipelineSet

log = logging.getLogger(__name__)


def pipeline_routes(pipelines: PipelineSet, limits: RequestLimits) -> list[Route]:
    """The routes above, serving ``pipelines``; bodies are read within ``limits``."""

    def unknown(name: str) -> Response:
        known = ", ".join(pipelines.pipelines) or "none configured"
        return JSONResponse(
            {"error": f"no pipeline {name!r} (pipelines: {known})"}, status_code=404
        )

    async def index(request: Request) -> Response:
        return JSONResponse(
            {
                "pipelines": [
                    {
                        "name": p.name,
                        "sample_rate": p.sample_rate,
                        "stages": [s.name for s in p.stages],
                    }
                    for p in pipelines.pipelines.values()
                ]
            }
        )

    async def stream(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in pipelines.pipelines:
            return unknown(name)
        end = request.query_params.get("end", "false").lower() in ("1", "true", "yes")
        reservation = None
        try:
            declared = limits.declared_length(request)
            reservation = await limits.admit(declared, json_bytes=0)
            body = await read_body(request, limits, reservation, declared, BINARY_BYTE_COST)
            events = await run_in_threadpool(pipelines.feed, name, body, end)
        except ServingError as exc:
            headers = {"Retry-After": "1"} if exc.status == 503 else None
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)
        except EdgeDLError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:
            log.exception("pipeline %s failed on a chunk", name)
            return JSONResponse({"error": f"pipeline {name!r} failed: {type(exc).__name__}: {exc}"}, status_code=500)  # fmt: skip
        finally:
            if reservation is not None:
                limits.release(reservation)
        pipeline = pipelines.pipelines[name]
        return JSONResponse(
            {
                "pipeline": name,
                "events": [e.to_dict() for e in events],
                "position_s": round(pipeline.position_s, 3),
            }
        )

    async def stats(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in pipelines.pipelines:
            return unknown(name)
        return JSONResponse({"pipeline": name, "stages": pipelines.pipelines[name].stats()})

    return [
        Route("/v2/pipelines", index, methods=["GET"]),
        Route("/v2/pipelines/{name}/stream", stream, methods=["POST"]),
        Route("/v2/pipelines/{name}/stats", stats, methods=["GET"]),
    ]
