"""The OpenAPI 3 description of the collector's JSON API, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from edgedl._version import __version__

from .fleet.api import FLEET_OPENAPI_PATHS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string"},
    }


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


_NUM = {"type": "number"}
_NULLABLE_NUM = {"type": ["number", "null"]}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "edgedl collector",
        "version": __version__,
        "description": "Devices, telemetry windows, drift and alerts of an edgedl fleet.",
    },
    "paths": {
        "/api/v1/devices": {
            "get": {
                "summary": "Every device (a device is its fleet and its name)",
                "parameters": [_query("fleet", "only this fleet")],
                "responses": {"200": _json(_array(_ref("Device")))},
            }
        },
        "/api/v1/devices/{device}": {
            "get": {
                "summary": "One device by name, when only one fleet has a device of that name",
                "parameters": [_path("device")],
                "responses": {
                    "200": _json(_ref("DeviceDetail")),
                    "404": _json(_ref("Error"), "No such device"),
                    "409": _json(_ref("Error"), "Several fleets have a device of that name"),
                },
            }
        },
        "/api/v1/devices/{fleet}/{device}": {
            "get": {
                "summary": "One device of a fleet, with figures of its newest window",
                "parameters": [_path("fleet"), _path("device")],
                "responses": {
                    "200": _json(_ref("DeviceDetail")),
                    "404": _json(_ref("Error"), "No such device"),
                },
            }
        },
        "/api/v1/windows": {
            "get": {
                "summary": "Stored windows, newest first (without payload)",
                "parameters": [
                    _query("device", "only this device"),
                    _query("fleet", "only this fleet"),
                    _query("limit", "at most this many (1-5000, default 100)", {"type": "integer"}),
                ],
                "responses": {"200": _json(_array(_ref("Window")))},
            }
        },
        "/api/v1/drift": {
            "get": {
                "summary": "Latest drift evaluation per device and model version, and fleet-wide",
                "parameters": [
                    _query("device", "only this device"),
                    _query("model", "only this model"),
                    _query("version", "only this model version"),
                    _query("fleet", "only this fleet"),
                    _query(
                        "scope", "device or fleet", {"type": "string", "enum": ["device", "fleet"]}
                    ),
                    _query("fleet_wide", "true: fleet-wide results only (same as scope=fleet)"),
                    _query("history", "true: add each key's PSI history (last 120 evaluations)"),
                ],
                "responses": {"200": _json(_array(_ref("Drift")))},
            }
        },
        "/api/v1/alerts": {
            "get": {
                "summary": "Alerts, newest first",
                "parameters": [
                    _query(
                        "state",
                        "open or resolved",
                        {"type": "string", "enum": ["open", "resolved"]},
                    ),
                    _query("limit", "at most this many", {"type": "integer"}),
                    _query("fleet", "only this fleet's alerts"),
                ],
                "responses": {"200": _json(_array(_ref("Alert")))},
            }
        },
        "/api/v1/alerts/{id}/ack": {
            "post": {
                "summary": "Acknowledge an alert (needs Authorization: Bearer <[http] admin_token>)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": _json(_ref("Alert")),
                    "400": _json(_ref("Error"), "The id is not an integer"),
                    "401": _json(_ref("Error"), "No or wrong token"),
                    "403": _json(_ref("Error"), "No [http] admin_token configured"),
                    "404": _json(_ref("Error"), "No such alert"),
                },
            }
        },
        "/api/v1/series": {
            "get": {
                "summary": "A metric of stored windows over a time range, downsampled to points",
                "parameters": [
                    _query(
                        "metric",
                        "latency (p50/p95/p99 ms), throughput (per_s) or errors (error_rate)",
                        {"type": "string", "enum": ["latency", "throughput", "errors"]},
                    ),
                    _query("from", "start, seconds since the epoch (default: to - 1 h)", _NUM),
                    _query("to", "end, seconds since the epoch (default: now)", _NUM),
                    _query(
                        "points",
                        "at most this many points (1-1000, default 200)",
                        {"type": "integer"},
                    ),
                    _query("fleet", "only this fleet"),
                    _query("device", "only this device"),
                ],
                "responses": {
                    "200": _json({"type": "object"}),
                    "400": _json(_ref("Error"), "Unknown metric, bad range or bad number"),
                },
            }
        },
        "/api/v1/accuracy": {
            "get": {
                "summary": "Real accuracy, macro precision, recall and F1 from late labels",
                "parameters": [
                    _query("fleet", "only this fleet"),
                    _query("device", "only this device"),
                    _query("model", "only this model"),
                    _query("version", "only this model version"),
                    _query(
                        "since", "windows that ended at or after, seconds since the epoch", _NUM
                    ),
                    _query("until", "windows that ended before, seconds since the epoch", _NUM),
                    _query("bucket_s", "also a series in buckets of this many seconds", _NUM),
                ],
                "responses": {
                    "200": _json({"type": "object"}),
                    "400": _json(_ref("Error"), "A bad number"),
                },
            }
        },
        "/api/v1/labels": {
            "post": {
                "summary": (
                    "Late labels by prediction id, counted once with the devices' (needs "
                    "Authorization: Bearer <[http] admin_token>); one label object, or "
                    '{"labels": [...]}'
                ),
                "requestBody": _json({"type": "object"}),
                "responses": {
                    "200": _json({"type": "object"}, "Accepted (or, for a list, every result)"),
                    "400": _json({"type": "object"}, "Malformed body or label"),
                    "401": _json(_ref("Error"), "No or wrong token"),
                    "403": _json(_ref("Error"), "No [http] admin_token configured"),
                    "404": _json({"type": "object"}, "Unknown device, model version or id"),
                    "409": _json({"type": "object"}, "The prediction's label is counted already"),
                    "413": _json(_ref("Error"), "More than 1000 labels or 512 KiB"),
                },
            }
        },
        "/api/v1/dead-letters": {
            "get": {
                "summary": "Messages refused by validation, newest first",
                "responses": {"200": _json(_array({"type": "object"}))},
            }
        },
        "/api/v1/references": {
            "get": {
                "summary": "Registered reference profiles",
                "responses": {"200": _json(_array({"type": "object"}))},
            },
            "post": {
                "summary": "Register a bundle's manifest.json as the reference of its model version",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "201": _json({"type": "object"}, "Registered"),
                    "400": _json(_ref("Error"), "Not JSON"),
                    "422": _json(_ref("Error"), "Not a manifest, or no reference profile"),
                },
            },
        },
        "/api/v1/stage-health": {
            "get": {
                "summary": "Stage health of the devices' pipelines: VAD kept share, segments per "
                "minute, ASR confidence, words per segment, each judged against the pipeline's "
                "reference profile",
                "parameters": [
                    _query("fleet", "only this fleet"),
                    _query("device", "only this device"),
                ],
                "responses": {"200": _json(_array({"type": "object"}))},
            }
        },
        "/api/v1/pipeline-references": {
            "get": {
                "summary": "Registered stage-health profiles of pipelines",
                "responses": {"200": _json(_array({"type": "object"}))},
            },
            "post": {
                "summary": "Register a pipeline's stage-health profile "
                "(written by edgedl agent run-pipeline --profile)",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "201": _json({"type": "object"}, "Registered"),
                    "400": _json(_ref("Error"), "Not JSON"),
                    "422": _json(_ref("Error"), "Not a stage-health profile"),
                },
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics: the collector's own, drift and health per device and fleet",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {"type": "object", "properties": {"error": _STR}, "required": ["error"]},
            "Device": {
                "type": "object",
                "required": [
                    "device",
                    "fleet",
                    "online",
                    "last_seen",
                    "model",
                    "version",
                    "inferences",
                ],
                "properties": {
                    "device": _STR,
                    "fleet": _STR,
                    "online": {"type": "boolean"},
                    "last_seen": {
                        **_NULLABLE_NUM,
                        "description": "epoch seconds of the newest window received",
                    },
                    "model": _NULLABLE_STR,
                    "version": _NULLABLE_STR,
                    "inferences": {"type": "integer", "description": "total over stored windows"},
                    "windows": {"type": "integer"},
                    "missing": {
                        "type": "integer",
                        "description": "windows never received: gaps in seq within each epoch",
                    },
                    "epoch": {
                        **_NULLABLE_STR,
                        "description": "spool epoch of the newest window",
                    },
                    "epochs": _array(
                        {
                            "type": "object",
                            "description": "one life of the device's spool: epoch, first_seq, "
                            "last_seq, windows, inferences, missing, first_seen, last_seen",
                        }
                    ),
                    "last_seq": {"type": ["integer", "null"]},
                    "window_s": _NULLABLE_NUM,
                    "agent_version": _NULLABLE_STR,
                    "status": {
                        "type": ["object", "null"],
                        "description": "the retained status message",
                    },
                },
            },
            "DeviceDetail": {
                "allOf": [
                    _ref("Device"),
                    {
                        "type": "object",
                        "properties": {"latest_window": {"type": ["object", "null"]}},
                    },
                ]
            },
            "Window": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer"},
                    "device": _STR,
                    "fleet": _STR,
                    "epoch": _STR,
                    "seq": {"type": "integer"},
                    "window_start": _NUM,
                    "window_end": _NUM,
                    "received_at": _NUM,
                    "model": _NULLABLE_STR,
                    "version": _NULLABLE_STR,
                    "requests": {"type": "integer"},
                    "inferences": {"type": "integer"},
                    "errors": {"type": "integer"},
                    "latency_p50_ms": _NULLABLE_NUM,
                    "latency_p95_ms": _NULLABLE_NUM,
                    "latency_p99_ms": _NULLABLE_NUM,
                    "throughput": {**_NULLABLE_NUM, "description": "inferences per second"},
                },
            },
            "Drift": {
                "type": "object",
                "properties": {
                    "scope": {"type": "string", "enum": ["device", "fleet"]},
                    "fleet": _STR,
                    "device": _NULLABLE_STR,
                    "model": _STR,
                    "version": _STR,
                    "reference": {
                        "type": "boolean",
                        "description": "a reference profile is registered",
                    },
                    "samples": {"type": "integer"},
                    "evaluated_at": _NUM,
                    "statistics": _array(
                        {
                            "type": "object",
                            "properties": {
                                "statistic": _STR,
                                "samples": {"type": "integer"},
                                "judged": {"type": "boolean"},
                                "psi": _NULLABLE_NUM,
                                "js": _NULLABLE_NUM,
                                "ks": _NULLABLE_NUM,
                                "wasserstein": _NULLABLE_NUM,
                                "p_values": {
                                    "type": "object",
                                    "description": "psi, js, ks, wasserstein: p under no drift",
                                },
                                "decisions": _array({"$ref": "#/components/schemas/DriftDecision"}),
                                "mean": _NULLABLE_NUM,
                                "reference_mean": _NULLABLE_NUM,
                                "status": {
                                    "type": "string",
                                    "enum": ["ok", "watch", "alert", "too few samples", "no data"],
                                },
                            },
                        }
                    ),
                    "classes": _array(
                        {
                            "type": "object",
                            "properties": {
                                "output": _STR,
                                "chi2": _NUM,
                                "p_value": _NUM,
                                "psi": _NUM,
                                "samples": {"type": "integer"},
                                "judged": {"type": "boolean"},
                                "decision": {"$ref": "#/components/schemas/DriftDecision"},
                            },
                        }
                    ),
                    "sequential": _array({"$ref": "#/components/schemas/DriftDecision"}),
                    "confidence": _array(
                        {
                            "type": "object",
                            "properties": {
                                "statistic": _STR,
                                "mean": _NUM,
                                "reference_mean": _NULLABLE_NUM,
                                "shift": _NUM,
                            },
                        }
                    ),
                    "latency": {"type": "object"},
                    "errors": {"type": "object"},
                    "history": _array(
                        {"type": "object", "description": "PSI per statistic over time"}
                    ),
                },
            },
            "DriftDecision": {
                "type": "object",
                "description": "one drift decision (edgedl.collector.decision.DriftDecision)",
                "properties": {
                    "statistic": _STR,
                    "test": {
                        "type": "string",
                        "enum": ["psi", "js", "ks", "wasserstein", "class_psi", "cusum"],
                    },
                    "effect": _NULLABLE_NUM,
                    "min_effect": _NUM,
                    "p_value": _NULLABLE_NUM,
                    "score": _NULLABLE_NUM,
                    "threshold": _NUM,
                    "samples": {"type": "integer"},
                    "judged": {"type": "boolean"},
                    "is_drift": {"type": "boolean"},
                    "reason": _STR,
                },
            },
            "Alert": {
                "type": "object",
                "required": ["kind", "device", "metric", "value", "threshold", "state"],
                "properties": {
                    "id": {"type": "integer"},
                    "kind": {
                        "type": "string",
                        "enum": ["drift", "latency", "offline", "errors", "rollout"],
                    },
                    "scope": {"type": "string", "enum": ["device", "fleet"]},
                    "fleet": _STR,
                    "device": _NULLABLE_STR,
                    "model": _NULLABLE_STR,
                    "version": _NULLABLE_STR,
                    "metric": _STR,
                    "value": _NUM,
                    "threshold": _NUM,
                    "state": {"type": "string", "enum": ["open", "resolved"]},
                    "opened_at": _NUM,
                    "resolved_at": _NULLABLE_NUM,
                    "acknowledged_at": _NULLABLE_NUM,
                    "current_value": _NULLABLE_NUM,
                    "current_at": _NULLABLE_NUM,
                    "message": _NULLABLE_STR,
                },
            },
        }
    },
}

OPENAPI["paths"].update(FLEET_OPENAPI_PATHS)  # fleet rollouts (edgedl.collector.fleet.api)
