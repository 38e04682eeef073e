"""Drive load: a concurrency sweep (closed loop) or a fixed request rate (open loop).

Closed loop: ``concurrency`` connections, each sending its next request as soon as the last
answer arrived. Open loop: requests start on a fixed schedule (``rate`` per second) whatever
the answers do, each on an idle connection (a new one when none is idle), and latency runs
from the scheduled start, so a server that falls behind shows its queueing (no coordinated
omission). Either stops after ``duration`` seconds or ``requests`` requests.

Latency percentiles and throughput count answered requests (status 200); every other status
is counted by code (429 among them; 0 = no HTTP answer). The client's own CPU time per
request (``time.process_time``) is measured, to show the generator is not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgedl.errors import ServingError

from .http import Connection, Endpoint

WARMUP_REQUESTS = 3


@dataclass
class Step:
    """What one load step measured."""

    mode: str  # "concurrency" or "rate"
    value: float
    latencies: list[float] = field(default_factory=list)
    errors: Counter[int] = field(default_factory=Counter)
    elapsed: float = 0.0
    cpu: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The step's results: requests, errors by status, throughput of the successful ones,
        latency percentiles in ms (NaN when none succeeded) and the client's CPU time."""
        ok = len(self.latencies)
        total = ok + sum(self.errors.values())
        lat = np.asarray(self.latencies) * 1e3 if ok else np.asarray([np.nan])
        return {
            "step": f"{self.value:g}" if self.mode == "rate" else int(self.value),
            "mode": self.mode,
            "requests": total,
            "ok": ok,
            "errors": {str(k): v for k, v in sorted(self.errors.items())},
            "elapsed_s": round(self.elapsed, 6),
            "throughput_rps": ok / self.elapsed if self.elapsed else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)),
            "client_cpu_s": round(self.cpu, 4),
            "client_cpu_us_per_request": self.cpu / total * 1e6 if total else 0.0,
            "client_cpu_share": self.cpu / self.elapsed if self.elapsed else 0.0,
        }


async def model_metadata(endpoint: Endpoint, model: str) -> dict[str, Any]:
    """``GET /v2/models/MODEL``; :class:`ServingError` when the server says no."""
    conn = Connection(endpoint)
    try:
        status, body = await conn.exchange(endpoint.request("GET", f"/v2/models/{model}"))
    finally:
        conn.close()
    if status == 0:
        raise ServingError(
            f"no answer from {endpoint.host}:{endpoint.port} (is the server running?)", 0
        )
    if status != 200:
        raise ServingError(f"GET /v2/models/{model} answered {status}: {body[:200]!r}", status)
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ServingError(f"GET /v2/models/{model}: not a JSON object", 502)
    return doc


def _done(step: Step, started: float, duration: float | None, limit: int | None,
          sent: int) -> bool:  # fmt: skip
    if limit is not None:
        return sent >= limit
    return time.perf_counter() - started >= (duration or 0.0)


async def closed_loop(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    concurrency: int,
    duration: float | None = None,
    limit: int | None = None,
) -> Step:
    """``concurrency`` connections back to back; each first sends a few warm-up requests."""
    step = Step("concurrency", concurrency)
    conns = [Connection(endpoint) for _ in range(concurrency)]
    for k, conn in enumerate(conns):
        for i in range(WARMUP_REQUESTS):
            await conn.exchange(requests[(k + i) % len(requests)])
    sent = 0
    cpu0, started = time.process_time(), time.perf_counter()

    async def worker(conn: Connection, k: int) -> None:
        nonlocal sent
        i = k
        while not _done(step, started, duration, limit, sent):
            sent += 1
            t0 = time.perf_counter()
            status, _ = await conn.exchange(requests[i % len(requests)])
            if status == 200:
                step.latencies.append(time.perf_counter() - t0)
            else:
                step.errors[status] += 1
            i += concurrency

    try:
        await asyncio.gather(*(worker(c, k) for k, c in enumerate(conns)))
    finally:
        step.elapsed = time.perf_counter() - started
        step.cpu = time.process_time() - cpu0
        for conn in conns:
            conn.close()
    return step


async def open_loop(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    rate: float,
    duration: float | None = None,
    limit: int | None = None,
    max_connections: int = 512,
) -> Step:
    """Requests started ``rate`` times a second on a schedule, over up to ``max_connections``."""
    step = Step("rate", rate)
    idle: list[Connection] = [Connection(endpoint)]
    opened = 1
    for i in range(WARMUP_REQUESTS):
        await idle[0].exchange(requests[i % len(requests)])
    total = limit if limit is not None else max(1, round(rate * (duration or 0.0)))
    slots = asyncio.Semaphore(max_connections)
    tasks: list[asyncio.Task[None]] = []
    cpu0, started = time.process_time(), time.perf_counter()

    async def one(i: int, scheduled: float) -> None:
        nonlocal opened
        async with slots:
            if idle:
                conn = idle.pop()
            else:
                conn, opened = Connection(endpoint), opened + 1
            status, _ = await conn.exchange(requests[i % len(requests)])
            if status == 200:
                step.latencies.append(time.perf_counter() - scheduled)
            else:
                step.errors[status] += 1
            idle.append(conn)

    try:
        for i in range(total):
            scheduled = started + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    finally:
        step.elapsed = time.perf_counter() - started
        step.cpu = time.process_time() - cpu0
        for conn in idle:
            conn.close()
    return step


def knee(steps: Sequence[dict[str, Any]], p99_bound_ms: float | None) -> dict[str, Any] | None:
    """The step with the highest throughput whose p99 stays under the bound, without errors."""
    if p99_bound_ms is None:
        return None
    fit = [s for s in steps if not s["errors"] and s["ok"] and s["p99_ms"] <= p99_bound_ms]
    return max(fit, key=lambda s: s["throughput_rps"]) if fit else None


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # asyncio's own loop works, at a higher cost per request
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_load(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    *,
    concurrency: Sequence[int] = (),
    rates: Sequence[float] = (),
    duration: float | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Every concurrency step, then every rate step, one after the other."""
    _use_uvloop()

    async def all_steps() -> list[Step]:
        out = [await closed_loop(endpoint, requests, c, duration, limit) for c in concurrency]
        out += [await open_loop(endpoint, requests, r, duration, limit) for r in rates]
        return out

    return [s.to_dict() for s in asyncio.run(all_steps())]
