"""``edgedl loadtest`` against bench/agent.py's own HTTP client, same agent, same setting.

The agent (`edgedl agent serve`, digits onnx-fp32, one thread, batching ``on``:
max_batch_size 32, no queue delay) runs once; for each concurrency the two clients take
turns in blocks of ``--block`` seconds (alternating keeps a change in the machine's load
from landing on one of them), both sending the same binary request (bench/agent.py's
``binary_request`` of its ``sample_input``) over keep-alive connections on one event loop.
Per concurrency: requests/s and p99 of each, their ratio, and loadtest's own CPU time per
request and share of a core.

Usage: python bench/loadtest.py [--seconds 6] [--block 1] [--concurrency 1,8,32]
Prints a markdown table and writes bench/results/loadtest.json (with the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent


def _bench_agent() -> Any:
    spec = importlib.util.spec_from_file_location("bench_agent", ROOT / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per client and concurrency")
    parser.add_argument("--block", type=float, default=1.0)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgedl-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "loadtest.json")
    args = parser.parse_args()
    bench = _bench_agent()
    from edgedl.loadtest import Endpoint
    from edgedl.loadtest.run import closed_loop

    bundle = bench.build_bundles(args.cache, ["digits-onnx"])["digits-onnx"]
    agent = bench.AgentSubprocess(bundle, **bench.BATCHING["on"])
    x = bench.sample_input(bundle)
    body, headers = bench.binary_request(bench._input_name(bundle), x)
    path = f"/v2/models/{agent.name}/infer"
    endpoint = Endpoint.parse(agent.url)
    request = endpoint.request(
        "POST", path, body, "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    )
    rows = []
    try:
        for c in [int(v) for v in args.concurrency.split(",")]:
            ours: list[dict[str, Any]] = []
            theirs: list[Any] = []
            for _ in range(max(1, round(args.seconds / args.block))):
                theirs.append(asyncio.run(bench._load_http(agent.port, path, body, headers, c,
                                                           args.block)))  # fmt: skip
                step = asyncio.run(closed_loop(endpoint, [request], c, duration=args.block))
                ours.append(step)
            b = bench._summary(theirs)
            lat = np.asarray([v for s in ours for v in s.latencies])
            elapsed = sum(s.elapsed for s in ours)
            cpu = sum(s.cpu for s in ours)
            total = sum(len(s.latencies) + sum(s.errors.values()) for s in ours)
            row = {
                "concurrency": c,
                "bench_rps": b["throughput_rps"],
                "bench_p99_ms": b["p99_ms"],
                "loadtest_rps": lat.size / elapsed,
                "loadtest_p99_ms": float(np.percentile(lat, 99) * 1e3),
                "loadtest_errors": total - lat.size,
                "loadtest_cpu_us_per_request": cpu / total * 1e6,
                "loadtest_cpu_share": cpu / elapsed,
            }
            row["rps_ratio"] = row["loadtest_rps"] / row["bench_rps"]
            row["p99_ratio"] = row["loadtest_p99_ms"] / row["bench_p99_ms"]
            rows.append(row)
            print(f"concurrency {c}: done", flush=True)
    finally:
        agent.stop()
    results = {"machine": bench.machine(), "setting": "digits onnx-fp32, batching on, binary",
               "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("| concurrency | bench req/s | loadtest req/s | ratio | bench p99 ms | loadtest p99 ms "
          "| ratio | loadtest CPU µs/req | loadtest CPU share |")  # fmt: skip
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['bench_rps']:.0f} | {r['loadtest_rps']:.0f} "
              f"| {r['rps_ratio']:.3f} | {r['bench_p99_ms']:.2f} | {r['loadtest_p99_ms']:.2f} "
              f"| {r['p99_ratio']:.3f} | {r['loadtest_cpu_us_per_request']:.0f} "
              f"| {r['loadtest_cpu_share']:.0%} |")  # fmt: skip
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
