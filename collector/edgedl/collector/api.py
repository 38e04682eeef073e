"""The collector's HTTP side: JSON API under /api/v1, /openapi.json, /metrics and the dashboard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edgedl.errors import EdgeDLError, TelemetryError
from edgedl.telemetry import decode_window

from .accuracy import LabelScope, accuracy_report
from .alerts import alert_json
from .auth import admin_refusal
from .fleet.api import fleet_routes
from .jsonsafe import SafeJSONResponse as JSONResponse
from .jsonsafe import finite_or_none
from .labels_api import label_routes
from .openapi import OPENAPI
from .pipeline_health import parse_profile
from .references import parse_manifest
from .series import series as window_series
from .store import AmbiguousDevice

if TYPE_CHECKING:
    from .service import Collector

STATIC = Path(__file__).with_name("static")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EdgeDLError(f"{name} must be an integer") from None
    return max(low, min(high, value))


def _float_param(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise EdgeDLError(f"{name} must be a number (seconds since the epoch)") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise EdgeDLError(f"{name} must be finite")
    return value


def is_online(row: dict[str, Any], collector: Collector, now: float) -> bool:
    """Whether a device is online: it sends windows, and no later status says it went away.

    A device silent for ``offline_after_windows`` windows is offline. An ``online: false``
    status counts only until a window arrives after it: a device that is sending windows is
    not offline, whatever a (possibly forged, retained) status says.
    """
    cfg = collector.config.alerts
    # A database written before windows were bounded may hold inf here: treat it as unknown.
    window_s = finite_or_none(row.get("window_s"))
    limit = cfg.offline_after_windows * max(window_s or cfg.default_window_s, 0.001)
    last_seen = finite_or_none(row.get("last_seen"))
    if last_seen is None:
        return bool(row.get("online"))  # announced itself, no window yet
    if now - float(last_seen) > limit:
        return False
    status_at = finite_or_none(row.get("status_received_at"))
    said_offline = row.get("online") is False
    return not said_offline or (status_at is not None and float(last_seen) > float(status_at))


def device_json(row: dict[str, Any], collector: Collector, now: float) -> dict[str, Any]:
    """A device row as the API shows it, with ``online`` worked out from silence and status."""
    last_seen = finite_or_none(row.get("last_seen"))
    status = json.loads(row["status"]) if row.get("status") else None
    return {
        "device": row["device"],
        "fleet": row["fleet"],
        "online": is_online(row, collector, now),
        "last_seen": last_seen,
        "model": row.get("model"),
        "version": row.get("version"),
        "inferences": int(row.get("inferences") or 0),
        "windows": int(row.get("windows") or 0),
        "missing": int(row.get("missing") or 0),
        "epoch": row.get("epoch"),
        "epochs": row.get("epochs", []),
        "last_seq": row.get("last_seq"),
        "window_s": finite_or_none(row.get("window_s")),
        "agent_version": row.get("agent_version"),
        "status": status,
    }


def create_app(collector: Collector) -> Starlette:
    """The Starlette application serving ``collector``."""
    store = collector.store

    def devices(request: Request) -> Response:
        now = time.time()
        fleet = request.query_params.get("fleet")
        return JSONResponse(
            [
                device_json(r, collector, now)
                for r in store.devices()
                if fleet is None or r["fleet"] == fleet
            ]
        )

    def device(request: Request) -> Response:
        name = request.path_params["device"]
        fleet = request.path_params.get("fleet")
        try:
            row = store.device(name, fleet)
        except AmbiguousDevice as exc:
            return _error(409, f"{exc}: /api/v1/devices/FLEET/{name}")
        if row is None:
            return _error(404, f"no device {name!r}" + (f" in fleet {fleet!r}" if fleet else ""))
        body = device_json(row, collector, time.time())
        body["stage_health"] = collector.pipeline_health.results(row["fleet"], row["device"])
        latest = store.windows(name, 1, with_payload=True, fleet=row["fleet"])
        body["latest_window"] = None
        if latest:
            try:
                w = decode_window(latest[0]["payload"])
                body["latest_window"] = {
                    "epoch": w.epoch,
                    "seq": w.seq,
                    "window_start": w.window_start,
                    "window_end": w.window_end,
                    "system": w.system.model_dump(),
                    "pipelines": w.pipelines,
                    "spool": w.spool.model_dump(),
                    "models": [
                        {
                            "name": m.name,
                            "version": m.version,
                            "sha256": m.sha256,
                            "counts": m.counts.model_dump(),
                        }
                        for m in w.models
                    ],
                }
            except TelemetryError:
                pass
        return JSONResponse(body)

    def windows(request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, 5000)
        name = request.query_params.get("device")
        rows = store.windows(name, limit, fleet=request.query_params.get("fleet"))
        for r in rows:
            span = r["window_end"] - r["window_start"]
            r["throughput"] = finite_or_none(r["inferences"] / span) if span > 0 else None
        return JSONResponse(rows)

    def drift_results(request: Request) -> Response:
        q = request.query_params
        scope = q.get("scope")
        if q.get("fleet_wide") in ("1", "true"):
            scope = "fleet"
        if scope not in (None, "device", "fleet"):
            return _error(400, "scope must be device or fleet")
        return JSONResponse(
            collector.monitor.results(
                device=q.get("device"),
                model=q.get("model"),
                version=q.get("version"),
                scope=scope,
                fleet=q.get("fleet"),
                history=q.get("history") in ("1", "true"),
            )
        )

    def alerts(request: Request) -> Response:
        state = request.query_params.get("state")
        if state not in (None, "open", "resolved"):
            return _error(400, "state must be open or resolved")
        limit = _int_param(request, "limit", 500, 1, 5000)
        fleet = request.query_params.get("fleet")
        out = []
        for row in store.alerts(state, limit, fleet):
            body = alert_json(row)
            current = collector.alerts.current(row.get("open_key"))
            body["current_value"], body["current_at"] = current or (None, None)
            out.append(body)
        return JSONResponse(out)

    def acknowledge(request: Request) -> Response:
        refused = admin_refusal(request, collector.config.http.admin_token)
        if refused is not None:
            return refused
        try:
            alert_id = int(request.path_params["id"])
        except ValueError:
            return _error(400, "the alert id must be an integer")
        row = store.acknowledge_alert(alert_id, time.time())
        if row is None:
            return _error(404, f"no alert {alert_id}")
        return JSONResponse(alert_json(row))

    def series(request: Request) -> Response:
        q = request.query_params
        end = _float_param(request, "to", time.time())
        start = _float_param(request, "from", end - 3600.0)
        points = _int_param(request, "points", 200, 1, 1000)
        return JSONResponse(
            window_series(
                store,
                q.get("metric", "latency"),
                start,
                end,
                points,
                fleet=q.get("fleet"),
                device=q.get("device"),
            )
        )

    def accuracy(request: Request) -> Response:
        q = request.query_params
        since = _float_param(request, "since", 0.0) if "since" in q else None
        until = _float_param(request, "until", 0.0) if "until" in q else None
        bucket_s = _float_param(request, "bucket_s", 0.0)
        if bucket_s < 0:
            raise EdgeDLError("bucket_s must be positive (seconds)")
        scope = LabelScope(
            fleet=q.get("fleet"),
            device=q.get("device"),
            model=q.get("model"),
            version=q.get("version"),
            since=since,
            until=until,
        )
        return JSONResponse(accuracy_report(store, scope, bucket_s or None))

    def dead_letters(request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        rows = store.dead_letters(limit)
        return JSONResponse(
            [
                {
                    **{k: v for k, v in r.items() if k != "payload"},
                    "payload_head": r["payload"][:200].decode("utf-8", "replace"),
                }
                for r in rows
            ]
        )

    def references(_request: Request) -> Response:
        return JSONResponse(collector.references.list())

    async def add_reference(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_MANIFEST_BYTES:
            return _error(413, f"a manifest may be at most {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = parse_manifest(json.loads(body))
            ref = collector.references.register(manifest)
        except json.JSONDecodeError as exc:
            return _error(400, f"not valid JSON: {exc}")
        except EdgeDLError as exc:
            return _error(422, str(exc))
        return JSONResponse(
            {
                "model": ref.name,
                "version": ref.version,
                "sha256": ref.sha256,
                "statistics": len(ref.stats),
            },
            status_code=201,
        )

    def stage_health(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(collector.pipeline_health.results(q.get("fleet"), q.get("device")))

    def pipeline_references(_request: Request) -> Response:
        return JSONResponse(collector.pipeline_health.profiles())

    async def add_pipeline_reference(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_MANIFEST_BYTES:
            return _error(413, f"a profile may be at most {MAX_MANIFEST_BYTES} bytes")
        try:
            profile = parse_profile(json.loads(body))
            collector.pipeline_health.register(profile)
        except json.JSONDecodeError as exc:
            return _error(400, f"not valid JSON: {exc}")
        except EdgeDLError as exc:
            return _error(422, str(exc))
        return JSONResponse({"pipeline": profile.pipeline, "figures": profile.figures}, status_code=201)  # fmt: skip

    def openapi(_request: Request) -> Response:
        return JSONResponse(OPENAPI)

    def metrics(_request: Request) -> Response:
        collector.metrics.alerts_open.set(collector.alerts.open_count)
        return Response(collector.metrics.text(), media_type="text/plain; version=0.0.4")

    def health(_request: Request) -> Response:
        mqtt = collector.mqtt
        return JSONResponse(
            {
                "status": "ok",
                "mqtt_connected": mqtt is not None and mqtt.connected.is_set(),
                "mqtt_subscribed": mqtt is not None and mqtt.subscribed.is_set(),
                "mqtt_error": mqtt.last_error if mqtt is not None else None,
                "mqtt_protocol": mqtt.protocol if mqtt is not None else None,
                # False on an MQTT 3.1.1 broker: every collector of the group gets every window.
                "mqtt_shared": mqtt is not None and mqtt.shared_subscription,
            }
        )

    def index(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def on_user_error(_request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/v1/devices", devices),
            Route("/api/v1/devices/{device}", device),
            Route("/api/v1/devices/{fleet}/{device}", device),
            Route("/api/v1/windows", windows),
            Route("/api/v1/drift", drift_results),
            Route("/api/v1/alerts", alerts),
            Route("/api/v1/alerts/{id}/ack", acknowledge, methods=["POST"]),
            Route("/api/v1/series", series),
            Route("/api/v1/accuracy", accuracy),
            Route("/api/v1/dead-letters", dead_letters),
            Route("/api/v1/references", references, methods=["GET"]),
            Route("/api/v1/references", add_reference, methods=["POST"]),
            Route("/api/v1/stage-health", stage_health),
            Route("/api/v1/pipeline-references", pipeline_references, methods=["GET"]),
            Route("/api/v1/pipeline-references", add_pipeline_reference, methods=["POST"]),
            Route("/openapi.json", openapi),
            Route("/metrics", metrics),
            Route("/healthz", health),
            *label_routes(collector),
            *fleet_routes(collector.fleet),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={EdgeDLError: on_user_error},
    )
