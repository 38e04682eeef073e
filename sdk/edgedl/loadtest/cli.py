"""``edgedl loadtest``: an Open Inference Protocol load generator with a terminal table."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ..cli import emit_json
from ..errors import UsageError
from .http import Endpoint
from .requests import infer_requests, load_inputs
from .run import knee, model_metadata, run_load


def _numbers(text: str | None, kind: type[float] | type[int], option: str) -> list[Any]:
    if not text:
        return []
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UsageError(f"{option} takes comma-separated numbers, not {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"{option} takes positive numbers, not {text!r}")
    return values


def render(result: dict[str, Any], console: Console) -> None:
    """The steps as a table, then the knee and the client's own CPU cost."""
    table = Table(title=f"loadtest {result['url']} model {result['model']}", title_justify="left")
    for col in (result["steps"][0]["mode"] if result["steps"] else "step", "requests", "req/s",
                "p50 ms", "p95 ms", "p99 ms", "errors", "client CPU µs/req", "client CPU %"):  # fmt: skip
        table.add_column(col, justify="left" if col == "errors" else "right")
    for s in result["steps"]:
        errors = ", ".join(f"{code}×{n}" for code, n in s["errors"].items()) or "0"
        table.add_row(str(s["step"]), str(s["requests"]), f"{s['throughput_rps']:.1f}",
                      f"{s['p50_ms']:.2f}", f"{s['p95_ms']:.2f}", f"{s['p99_ms']:.2f}", errors,
                      f"{s['client_cpu_us_per_request']:.0f}",
                      f"{s['client_cpu_share']:.0%}")  # fmt: skip
    console.print(table)
    if result["p99_bound_ms"] is not None:
        k = result["knee"]
        console.print(
            f"knee: {k['mode']} {k['step']}, {k['throughput_rps']:.1f} req/s at p99 "
            f"{k['p99_ms']:.2f} ms (bound {result['p99_bound_ms']:g} ms)"
            if k
            else f"knee: no step kept p99 under {result['p99_bound_ms']:g} ms without errors"
        )


@click.command()
@click.argument("url")
@click.option("--model", "-m", required=True, help="Model name on the server.")
@click.option("--concurrency", "-c", help="Connections to keep busy, comma-separated for a "
              "sweep (default 1,8,32 unless --rate).")  # fmt: skip
@click.option("--rate", "-r", help="Requests per second on a fixed schedule (comma-separated "
              "for a sweep) instead of a concurrency sweep.")  # fmt: skip
@click.option("--duration", "-d", type=click.FloatRange(min=0.1), help="Seconds per step "
              "(default 5).")  # fmt: skip
@click.option(
    "--requests",
    "-n",
    "limit",
    type=click.IntRange(min=1),
    help="Requests per step instead of --duration.",
)
@click.option(
    "--inputs",
    type=click.Path(path_type=Path),
    help="Real inputs: .npy or .npz (x), one request per sample (default: random).",
)
@click.option(
    "--input-name",
    help="The input to send (default: the first in the model's metadata); with --inputs, "
    "loads a server whose metadata lists no inputs.",
)
@click.option("--binary", is_flag=True, help="Send tensors with the binary data extension.")
@click.option(
    "--p99-bound",
    type=click.FloatRange(min=0, min_open=True),
    help="Milliseconds: report the knee, the fastest step whose p99 stays under it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def loadtest(
    url: str,
    model: str,
    concurrency: str | None,
    rate: str | None,
    duration: float | None,
    limit: int | None,
    inputs: Path | None,
    input_name: str | None,
    binary: bool,
    p99_bound: float | None,
    as_json: bool,
) -> None:
    """Load an Open Inference Protocol server (agent, Triton, MLServer) at URL.

    \b
    Example:
      edgedl loadtest http://127.0.0.1:8080 --model digits --concurrency 1,8,32 \\
          --duration 5 --p99-bound 20
    """
    if duration is not None and limit is not None:
        raise UsageError("give --duration or --requests, not both")
    levels = _numbers(concurrency, int, "--concurrency")
    rates = _numbers(rate, float, "--rate")
    if not levels and not rates:
        levels = [1, 8, 32]
    if limit is None and duration is None:
        duration = 5.0
    endpoint = Endpoint.parse(url)
    x = load_inputs(inputs) if inputs else None
    metadata = asyncio.run(model_metadata(endpoint, model))
    prepared = infer_requests(endpoint, model, metadata, x, binary=binary, input_name=input_name)
    steps = run_load(endpoint, prepared, concurrency=levels, rates=rates, duration=duration,
                     limit=limit)  # fmt: skip
    result = {
        "url": url,
        "model": model,
        "protocol": "binary" if binary else "json",
        "inputs": str(inputs) if inputs else "random",
        "p99_bound_ms": p99_bound,
        "client_cores": os.cpu_count(),
        "steps": steps,
        "knee": knee(steps, p99_bound),
    }
    if as_json:
        emit_json(result)
    else:
        render(result, Console())
