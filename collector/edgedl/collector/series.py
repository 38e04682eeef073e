"""Time series of stored windows over a time range, downsampled on the server.

When the range holds at most ``points`` windows, each window is a point (at its end).
Otherwise the range ``[from, to]`` is cut into ``points`` equal buckets by window end; each
bucket with windows gives one point (at its middle): for latency percentiles the mean of the windows' percentiles and the
largest (``max``), for throughput the inferences over the seconds the windows span, for the
error rate errors over requests. The database does the grouping, so a 30-day range of
thousands of windows costs one query and returns at most ``points`` rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, cast, func, select

from edgedl.errors import EdgeDLError

from .jsonsafe import finite_or_none
from .schema import windows
from .store import Store

METRICS = ("latency", "throughput", "errors")
MAX_POINTS = 1000
MAX_RANGE_S = 400 * 86_400.0


def series(
    store: Store,
    metric: str,
    start: float,
    end: float,
    points: int,
    fleet: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Points of ``metric`` (latency, throughput or errors) between ``start`` and ``end``."""
    if metric not in METRICS:
        raise EdgeDLError(f"metric must be one of {', '.join(METRICS)}")
    if not end > start or end - start > MAX_RANGE_S:
        raise EdgeDLError(f"from must be before to, at most {MAX_RANGE_S / 86400:.0f} days apart")
    if not 1 <= points <= MAX_POINTS:
        raise EdgeDLError(f"points must be between 1 and {MAX_POINTS}")
    w = windows.c
    step = (end - start) / points
    offset = (w.window_end - start) / step
    # floor() where the database has it (PostgreSQL's cast rounds); SQLite's cast truncates.
    sqlite = store.engine.dialect.name == "sqlite"
    bucket = cast(offset, Integer) if sqlite else func.floor(offset)
    where = [w.window_end >= start, w.window_end <= end]
    if fleet is not None:
        where.append(w.fleet == fleet)
    if device is not None:
        where.append(w.device == device)
    with store.engine.connect() as conn:
        count = int(conn.execute(select(func.count()).where(*where)).scalar_one())
    raw = count <= points
    key = (w.id if raw else bucket).label("key")
    span = func.sum(w.window_end - w.window_start)
    q = (
        select(
            key,
            func.max(w.window_end),
            func.count().label("windows"),
            func.avg(w.latency_p50_ms),
            func.avg(w.latency_p95_ms),
            func.avg(w.latency_p99_ms),
            func.max(w.latency_p99_ms),
            func.sum(w.inferences),
            span,
            func.sum(w.requests),
            func.sum(w.errors),
        )
        .where(*where)
        .group_by(key)
        .order_by(func.max(w.window_end) if raw else key)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(q).all()
    out: list[dict[str, Any]] = []
    for k, t_end, n, p50, p95, p99, p99_max, inferences, seconds, requests, errors in rows:
        if raw:
            point: dict[str, Any] = {"t": float(t_end), "windows": int(n)}
        else:
            i = min(max(int(k), 0), points - 1)  # a window ending exactly at ``to``: last bucket
            if out and out[-1]["bucket"] == i:
                continue
            point = {"bucket": i, "t": start + (i + 0.5) * step, "windows": int(n)}
        # PostgreSQL sums integers as numeric (Decimal): figures are floats from here on.
        inferences, seconds = float(inferences or 0), float(seconds or 0)
        requests, errors = float(requests or 0), float(errors or 0)
        if metric == "latency":
            point.update(
                p50_ms=finite_or_none(p50),
                p95_ms=finite_or_none(p95),
                p99_ms=finite_or_none(p99),
                max_p99_ms=finite_or_none(p99_max),
            )
        elif metric == "throughput":
            point["per_s"] = finite_or_none(inferences / seconds) if seconds else None
        else:
            point["error_rate"] = finite_or_none(errors / requests) if requests else None
        out.append(point)
    return {
        "metric": metric,
        "from": start,
        "to": end,
        "step_s": None if raw else step,
        "windows": count,
        "points": out,
    }
