"""HTTP routes for posting audio to the agent's pipelines (mounted by ``edgedl agent serve``).

* ``GET  /v2/pipelines`` — the pipelines and their sample rates.
* ``POST /v2/pipelines/{name}/stream`` — the body is raw s16le mono PCM at the pipeline's
  sample rate, the next chunk of one continuous stream; the answer is the events that chunk
  completed: ``{"pipeline", "events": [{"label", "start", "end", "score"}], "position_s"}``.
  ``?end=true`` ends the stream (the held-back events come out; the next chunk starts a new
  stream at 0 s).
* ``GET  /v2/pipelines/{name}/stats`` — :meth:`Pipeline.stats`.

Each pipeline is one stream: chunks from several clients are heard as one interleaved stream.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgedl.errors import EdgeDLError

from .pipeline_set import PipelineSet

log = logging.getLogger(__name__)


def pipeline_routes(pipelines: PipelineSet, max_body_bytes: int = 16 * 1024 * 1024) -> list[Route]:
    """The routes above, serving ``pipelines``; bodies over ``max_body_bytes`` get 413."""

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
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"error": f"body over {max_body_bytes} bytes; send smaller chunks"}, status_code=413)  # fmt: skip
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > max_body_bytes:
                return JSONResponse({"error": f"body over {max_body_bytes} bytes; send smaller chunks"}, status_code=413)  # fmt: skip
        try:
            events = await run_in_threadpool(pipelines.feed, name, bytes(body), end)
        except EdgeDLError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:
            log.exception("pipeline %s failed on a chunk", name)
            return JSONResponse({"error": f"pipeline {name!r} failed: {type(exc).__name__}: {exc}"}, status_code=500)  # fmt: skip
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
