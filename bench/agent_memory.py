"""Benchmark the agent's memory under large JSON requests: idle, peak and after.

An `edgedl agent serve` subprocess serves a small ONNX model (``y = 3 * x``, x of shape
[n, 3], FP32: the answer is as large as the request, so both directions count). Then:

  idle    VmRSS after one small request
  load    N concurrent requests of about S MiB of JSON each (flat lists of numbers, as
          tritonclient and edgedl's client send them), while another thread keeps sending
          small requests; VmRSS sampled every 20 ms, VmHWM read at the end
  after   VmRSS once the large requests are answered and memory has settled (the lowest
          value over the next few seconds)

The agent runs with ``server.request_memory_bytes`` = --budget-mib and a generous
``request_memory_wait_s``, so large requests queue for the budget instead of failing.
``--pythonpath`` runs another checkout's agent (for example the code before the memory
budget: ``--pythonpath /work/main/sdk:/work/main/device_agent``; it ignores the budget keys,
so they are left out when ``--no-budget`` is given).

Usage: python bench/agent_memory.py [--requests 20] [--size-mib 50] [--budget-mib 1024]
Prints a markdown table and writes bench/results/agent_memory.json (with the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent
EDGEDL = str(Path(sys.executable).with_name("edgedl"))
MIB = 1024 * 1024


def build_bundle(out: Path) -> Path:
    """A bundle of ``y = 3 * x`` with a dynamic batch dimension."""
    from onnx import TensorProto, helper

    from edgedl.bundle import Manifest, TensorSpec, sha256_file, write_bundle

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    three = helper.make_tensor("three", TensorProto.FLOAT, [1], [3.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "three"], ["y"])], "triple", [x], [y], [three])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_file = out / "triple.onnx"
    model_file.write_bytes(model.SerializeToString())
    manifest = Manifest(
        name="triple",
        version="1",
        target="onnx-fp32",
        runtime="onnxruntime",
        model_file="model.onnx",
        sha256=sha256_file(model_file),
        size_bytes=model_file.stat().st_size,
        inputs=[TensorSpec(name="x", shape=[-1, 3], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[-1, 3], dtype="float32")],
    )
    return write_bundle(out / "triple", model_file, manifest, {}).path


def json_body(size_mib: float) -> bytes:
    """An infer request of about ``size_mib`` MiB: six-decimal numbers in a flat list."""
    rows = int(size_mib * MIB / 30)  # three numbers of ~9 bytes and their commas per row
    values = np.random.default_rng(0).integers(0, 10**6, rows * 3) / 1e6
    doc = {"inputs": [{"name": "x", "shape": [rows, 3], "datatype": "FP32", "data": values.tolist()}]}  # fmt: skip
    return json.dumps(doc).encode()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A figure of /proc/<pid>/status, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: argparse.Namespace, bundle: Path, body: bytes) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    if not args.no_budget:
        env["EDGEDL_AGENT__SERVER__REQUEST_MEMORY_BYTES"] = str(args.budget_mib * MIB)
        env["EDGEDL_AGENT__SERVER__REQUEST_MEMORY_WAIT_S"] = "600"
    proc = subprocess.Popen(
        [EDGEDL, "agent", "serve", "--model", str(bundle), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the agent did not start")
            time.sleep(0.1)
        infer = f"{url}/v2/models/triple/infer"
        small = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}  # fmt: skip
        httpx.post(infer, json=small, timeout=30).raise_for_status()
        time.sleep(1)
        idle = rss_bytes(proc.pid)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    samples.append(rss_bytes(proc.pid))
                except (OSError, KeyError):
                    return
                time.sleep(0.02)

        small_latencies: list[float] = []
        small_failures: list[int] = []

        def small_requests() -> None:
            with httpx.Client(timeout=60) as client:
                while not done.is_set():
                    started = time.perf_counter()
                    answer = client.post(infer, json=small)
                    if answer.status_code == 200:
                        small_latencies.append(time.perf_counter() - started)
                    else:
                        small_failures.append(answer.status_code)
                    time.sleep(0.05)

        statuses: list[int] = []

        def big_request() -> None:
            try:
                answer = httpx.post(infer, content=body, timeout=600)
                statuses.append(answer.status_code)
            except httpx.HTTPError:
                statuses.append(0)

        threads = [threading.Thread(target=sample), threading.Thread(target=small_requests)]
        bigs = [threading.Thread(target=big_request) for _ in range(args.requests)]
        started = time.perf_counter()
        for t in threads + bigs:
            t.start()
        for t in bigs:
            t.join()
        wall = time.perf_counter() - started
        done.set()
        for t in threads:
            t.join()
        peak = rss_bytes(proc.pid, "VmHWM")
        settled = []
        for _ in range(int(args.settle_s / 0.25)):
            settled.append(rss_bytes(proc.pid))
            time.sleep(0.25)
        return {
            "code": args.label,
            "requests": args.requests,
            "request_mib": round(len(body) / MIB, 1),
            "budget_mib": None if args.no_budget else args.budget_mib,
            "idle_mib": round(idle / MIB),
            "peak_mib": round(max([peak, *samples]) / MIB),
            "after_mib": round(min(settled) / MIB),
            "ok": statuses.count(200),
            "refused": len(statuses) - statuses.count(200),
            "small_ok": len(small_latencies),
            "small_failed": len(small_failures),
            "small_max_s": round(max(small_latencies, default=0.0), 2),
            "wall_s": round(wall, 1),
        }
    finally:
        proc.kill()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--size-mib", type=float, default=50.0)
    parser.add_argument("--budget-mib", type=int, default=1024)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument("--pythonpath", default=None, help="PYTHONPATH of the agent to measure")
    parser.add_argument("--no-budget", action="store_true", help="do not set the budget keys")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "agent_memory.json")
    args = parser.parse_args()
    body = json_body(args.size_mib)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = build_bundle(Path(tmp))
        row = run(args, bundle, body)
    keys = list(row)
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    previous: list[dict[str, Any]] = []
    if args.output.exists():
        previous = json.loads(args.output.read_text()).get("runs", [])
    previous = [r for r in previous if (r["code"], r["requests"]) != (row["code"], row["requests"])]
    args.output.write_text(json.dumps({"machine": machine, "runs": [*previous, row]}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
