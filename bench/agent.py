"""Benchmark the agent's serving path: overhead over the raw interpreter, and batching.

Models (built once with edgedl.converters and cached under --cache):
  digits-onnx   the digits CNN as onnx-fp32 (dynamic batch dimension: manifest shape [-1, ...])
  digits-int8   the digits CNN as tflite-int8
  mnv2-int8     keras.applications.MobileNetV2(weights=None), 224x224x3, tflite-int8,
                calibrated on crops of scikit-learn's sample photographs (bench/convert.py);
                int8 input and output, so the agent quantizes each image in NumPy
  mnv2-int8-float-io  the same network as tflite-int8-float-io: int8 inside, float input
                and output, the (de)quantization done by the interpreter
  mnv2-onnx     the same network as onnx-fp32 (used by bench/peer_mlserver.py)

Part 1, cost per inference (batch 1, one interpreter thread, one request at a time; the
median per call, raw and in-process measured in alternating blocks):
  raw        the runtime alone on already-quantized input (LiteRT set_tensor/invoke/get_tensor,
             or ONNX Runtime session.run)
  in-process the agent without HTTP: validation, quantization, the batcher's queue and worker
             thread, dequantization, metrics (ServedModel.infer)
  http       POST /v2/models/{name}/infer to an `edgedl agent serve` subprocess, binary tensors,
             one keep-alive connection
  Each as a mean per inference and as a ratio to raw.

Part 2, throughput and p99 latency at concurrency 1, 8 and 32 with batching off
(max_batch_size 1), on (max_batch_size 32, max_queue_delay_ms 0: a batch is whatever queued
while the model was busy, the default kind) and on-2ms (max_batch_size 32,
max_queue_delay_ms 2), both in process (requests in flight on one
event loop: ServedModel.submit_async, await, finish, as the HTTP layer does) and over HTTP
(keep-alive connections of a minimal asyncio client against the subprocess).

Usage: python bench/agent.py [--seconds 3] [--models digits-onnx,digits-int8,mnv2-int8,...]
Prints markdown tables and writes bench/results/agent.json (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
EDGEDL = str(Path(sys.executable).with_name("edgedl"))
CONCURRENCY = (1, 8, 32)
BATCHING = {
    "off": {"max_batch_size": 1},
    "on": {"max_batch_size": 32},
    "on-2ms": {"max_batch_size": 32, "max_queue_delay_ms": 2.0},
}


def _convert_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench_convert", ROOT / "convert.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> dict[str, object]:
    """The CPU, core count and Python this ran on."""
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}  # fmt: skip


def build_bundles(cache: Path, models: list[str], build: bool = False) -> dict[str, Path]:
    """Convert the bench models once; later runs reuse the bundles in ``cache``."""
    wanted = {
        "digits-onnx": cache / "digits-onnx-fp32",
        "digits-int8": cache / "digits-tflite-int8",
        "mnv2-int8": cache / "mnv2-tflite-int8",
        "mnv2-int8-float-io": cache / "mnv2-tflite-int8-float-io",
        "mnv2-onnx": cache / "mnv2-onnx-fp32",
    }
    missing = [m for m in models if not (wanted[m] / "manifest.json").is_file()]
    if missing and not build:
        # TensorFlow stays out of the measuring process: convert in a child process.
        subprocess.run([sys.executable, __file__, "--build-only", "--models", ",".join(missing),
                        "--cache", str(cache)], check=True)  # fmt: skip
    elif missing:
        from edgedl.converters import ConvertOptions, convert
        from edgedl.converters.samples import train_digits

        if any(m.startswith("digits") for m in missing):
            d = train_digits(cache / "digits")
            for name, target in (("digits-onnx", "onnx-fp32"), ("digits-int8", "tflite-int8")):
                if name in missing:
                    convert(d.model, ConvertOptions(
                        target=target, calibration=d.train, validation=d.test, labels=d.labels,
                        output=wanted[name], force=True,
                    ))  # fmt: skip
        mnv2 = {"mnv2-int8": "tflite-int8", "mnv2-int8-float-io": "tflite-int8-float-io",
                "mnv2-onnx": "onnx-fp32"}  # fmt: skip
        if any(m in missing for m in mnv2):
            model, cal, val = _convert_bench().mobilenet_sources(cache, 64, 16)
            for name, target in mnv2.items():
                if name in missing:
                    convert(model, ConvertOptions(
                        target=target, calibration=cal, validation=val, output=wanted[name],
                        calibration_samples=64, max_accuracy_drop=100.0, force=True,
                    ))  # fmt: skip
    return {m: wanted[m] for m in models}


def sample_input(bundle: Path) -> np.ndarray:
    from edgedl.bundle import Bundle

    spec = Bundle.open(bundle).manifest.inputs[0]
    rng = np.random.default_rng(0)
    shape = [1, *spec.shape[1:]]
    return rng.uniform(0.0, 1.0, size=shape).astype(np.float32)


def timed(fn: Callable[[], object], seconds: float, warmup: int = 5) -> list[float]:
    """Call ``fn`` repeatedly for ``seconds``; return each call's duration."""
    for _ in range(warmup):
        fn()
    durations: list[float] = []
    end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        durations.append(t1 - t0)
        if t1 > end:
            return durations


def raw_invoke(bundle: Path, x: np.ndarray) -> Callable[[], object]:
    """The runtime alone, on input already in the model's own dtype."""
    from edgedl.bundle import Bundle
    from edgedl.runtime import quantize

    b = Bundle.open(bundle)
    spec = b.manifest.inputs[0]
    q = quantize(x, spec)
    if b.manifest.runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(
            str(b.model_path), options, providers=["CPUExecutionProvider"]
        )
        feed = {spec.name: q}
        return lambda: session.run(None, feed)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(b.model_path), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    outs = [d["index"] for d in interp.get_output_details()]

    def run() -> object:
        interp.set_tensor(inp, q)
        interp.invoke()
        return [interp.get_tensor(o) for o in outs]

    return run


def served_model(bundle: Path, **batching: Any) -> Any:
    from edgedl.agent.config import ModelConfig
    from edgedl.agent.metrics import AgentMetrics
    from edgedl.agent.repository import ModelRepository
    from edgedl.agent.served import Observers, ServedModel

    observers = Observers()
    repository = ModelRepository()
    metrics = AgentMetrics(repository)  # the same observer the agent runs with
    observers.add(metrics)
    model = ServedModel.load(
        bundle, ModelConfig(path=str(bundle), threads=1, **batching), observers
    )
    repository.add(model)
    metrics.start()
    model.start()
    model.bench_metrics = metrics
    return model


def stop_served(model: Any) -> None:
    model.stop()
    model.bench_metrics.stop()


class AgentSubprocess:
    """``edgedl agent serve`` on a free port with one model; ``server``: more [server] keys;
    ``prefix``: a command it runs under (``["taskset", "-c", "0"]``)."""

    def __init__(self, bundle: Path, server: dict[str, Any] | None = None,
                 prefix: tuple[str, ...] = (), **batching: Any) -> None:  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._dir = tempfile.TemporaryDirectory(prefix="edgedl-bench-agent-")
        config = Path(self._dir.name) / "agent.toml"
        settings = "".join(f"{k} = {v}\n" for k, v in batching.items())
        extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (server or {}).items())
        config.write_text(f'[server]\nport = {self.port}\n{extra}\n[[models]]\npath = "{bundle}"\n'
                          f"threads = 1\n{settings}")  # fmt: skip
        self.proc = subprocess.Popen([*prefix, EDGEDL, "agent", "serve", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    self.name = httpx.get(f"{self.url}/v2/models/{_name(bundle)}").json()["name"]
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"agent did not start (exit code {self.proc.poll()})")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self._dir.cleanup()


def _name(bundle: Path) -> str:
    from edgedl.bundle import Bundle

    return Bundle.open(bundle).manifest.name


def binary_request(name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    blob = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    return header + blob, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def interleaved(fns: dict[str, Callable[[], object]], seconds: float) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating short blocks.

    Alternating keeps a change in the machine's load (other processes) from landing on one
    of them only; the median keeps a preempted call from counting as the cost.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    end = time.perf_counter() + seconds * len(fns)
    while time.perf_counter() < end:
        for name, fn in fns.items():
            times[name].extend(timed(fn, 0.2, warmup=2))
    return {k: statistics.median(v) for k, v in times.items()}


def per_inference_cost(bundle: Path, seconds: float) -> dict[str, float]:
    x = sample_input(bundle)
    model = served_model(bundle, max_batch_size=1)
    feed = {model.manifest.inputs[0].name: x}
    cost = interleaved({"raw": raw_invoke(bundle, x), "in_process": lambda: model.infer(feed)},
                       seconds)  # fmt: skip
    stop_served(model)
    agent = AgentSubprocess(bundle, max_batch_size=1)
    body, headers = binary_request(model.manifest.inputs[0].name, x)
    path = f"/v2/models/{agent.name}/infer"
    http = _summary([asyncio.run(_load_http(agent.port, path, body, headers, 1, seconds))])
    agent.stop()
    raw, in_process, over_http = cost["raw"], cost["in_process"], http["p50_ms"] / 1e3
    return {
        "raw_ms": raw * 1e3,
        "in_process_ms": in_process * 1e3,
        "http_ms": over_http * 1e3,
        "in_process_ratio": in_process / raw,
        "http_ratio": over_http / raw,
    }


Block = tuple[list[float], float, int]  # latencies, elapsed seconds, errors


def load_in_process(model: Any, x: np.ndarray, concurrency: int, seconds: float) -> Block:
    """``concurrency`` requests kept in flight for ``seconds`` on one event loop, no HTTP.

    Exactly what the HTTP layer does per request, minus HTTP: ``ServedModel.submit_async``
    (checks, queue), await its asyncio future (resolved once per batch by the worker),
    ``ServedModel.finish`` (metrics). Concurrency comes from an
    event loop, as in the agent, not from client threads: 32 Python threads would mostly
    measure their own wake-ups.
    """

    async def run() -> Block:
        feed = {model.manifest.inputs[0].name: x}
        for _ in range(5):
            await model.submit_async(feed)
        latencies: list[float] = []
        began = time.perf_counter()
        stop_at = began + seconds

        async def worker() -> None:
            while True:
                t0 = time.perf_counter()
                outputs = await model.submit_async(feed)
                model.finish(t0, None)
                t1 = time.perf_counter()
                latencies.append(t1 - t0)
                if t1 > stop_at or not outputs:
                    return

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - began, 0

    return asyncio.run(run())


async def _load_http(port: int | str, path: str, body: bytes, headers: dict[str, str],
                     concurrency: int, seconds: float) -> Block:  # fmt: skip
    """``concurrency`` keep-alive connections sending ``body`` back to back for ``seconds``.

    ``port``: a TCP port of 127.0.0.1, or the path of a Unix socket.

    A minimal HTTP/1.1 client on asyncio streams: httpx's async client costs several times
    what the agent does per request, and on a small machine it would measure itself.
    """
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode() + body
    writers: list[asyncio.StreamWriter] = []

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return head.startswith(b"HTTP/1.1 200")

    async def connect() -> Callable[[], Awaitable[bool]]:
        if isinstance(port, str):
            reader, writer = await asyncio.open_unix_connection(port)
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        return lambda: exchange(reader, writer)

    try:
        return await closed_loop(connect, concurrency, seconds)
    finally:
        for writer in writers:
            writer.close()


async def closed_loop(connect: Callable[[], Awaitable[Callable[[], Awaitable[bool]]]],
                      concurrency: int, seconds: float) -> Block:  # fmt: skip
    """``concurrency`` callers, each made by ``connect()``, calling back to back for ``seconds``.

    A caller returns whether its call succeeded. Each caller first makes three calls; the
    clock starts once every caller is warm.
    """
    latencies: list[float] = []
    errors = 0
    ready = 0
    go = asyncio.Event()
    began = 0.0

    async def worker() -> None:
        nonlocal errors, ready, began
        call = await connect()
        for _ in range(3):
            await call()
        ready += 1
        if ready == concurrency:
            began = time.perf_counter()
            go.set()
        await go.wait()
        stop_at = began + seconds
        while True:
            t0 = time.perf_counter()
            ok = await call()
            t1 = time.perf_counter()
            errors += not ok
            latencies.append(t1 - t0)
            if t1 > stop_at:
                break

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began, errors


def _summary(blocks: list[Block]) -> dict[str, float]:
    arr = np.asarray([v for latencies, _, _ in blocks for v in latencies])
    elapsed = sum(b[1] for b in blocks)
    return {
        "requests": int(arr.size),
        "errors": sum(b[2] for b in blocks),
        "throughput_rps": arr.size / elapsed,
        "p50_ms": float(np.percentile(arr, 50) * 1e3),
        "p99_ms": float(np.percentile(arr, 99) * 1e3),
    }


def throughput(bundle: Path, seconds: float) -> list[dict[str, Any]]:
    """Every (path, batching, concurrency) cell, the batching modes measured in turns.

    All configurations run at once (idle when not measured) and each cell is measured in
    blocks of half a second taken in rotation, so a change in the machine's load spreads over
    every mode instead of favouring one.
    """
    x = sample_input(bundle)
    name = _input_name(bundle)
    models = {mode: served_model(bundle, **batching) for mode, batching in BATCHING.items()}
    agents = {mode: AgentSubprocess(bundle, **batching) for mode, batching in BATCHING.items()}
    body, headers = binary_request(name, x)
    rows: list[dict[str, Any]] = []
    block = 0.5
    try:
        for c in CONCURRENCY:
            blocks: dict[tuple[str, str], list[Block]] = {}
            for _ in range(max(1, round(seconds / block))):
                for mode in BATCHING:
                    blocks.setdefault(("in-process", mode), []).append(
                        load_in_process(models[mode], x, c, block)
                    )
                    agent = agents[mode]
                    path = f"/v2/models/{agent.name}/infer"
                    blocks.setdefault(("http", mode), []).append(
                        asyncio.run(_load_http(agent.port, path, body, headers, c, block))
                    )
            for (path_kind, mode), measured in blocks.items():
                rows.append({"path": path_kind, "batching": mode, "concurrency": c,
                             **_summary(measured)})  # fmt: skip
    finally:
        for model in models.values():
            stop_served(model)
        for agent in agents.values():
            agent.stop()
    rows.sort(key=lambda r: (r["path"] != "in-process", list(BATCHING).index(r["batching"]),
                             r["concurrency"]))  # fmt: skip
    return rows


def _input_name(bundle: Path) -> str:
    from edgedl.bundle import Bundle

    return Bundle.open(bundle).manifest.inputs[0].name


def check_targets(results: dict[str, Any]) -> list[str]:
    lines = []
    for key in ("mnv2-int8", "mnv2-int8-float-io"):
        mnv2 = results["cost"].get(key)
        if mnv2:
            ok = mnv2["in_process_ratio"] <= 1.05
            lines.append(f"- {key}, one thread: in-process / raw = {mnv2['in_process_ratio']:.3f} "
                         f"(target <= 1.05): {'met' if ok else 'NOT met'}")  # fmt: skip
    rows = results["throughput"].get("digits-onnx", [])
    for path in ("in-process", "http"):
        pick = {r["batching"]: r for r in rows if r["path"] == path and r["concurrency"] == 32}
        if "on" in pick and "off" in pick:
            gain = pick["on"]["throughput_rps"] / pick["off"]["throughput_rps"]
            p99_ok = pick["on"]["p99_ms"] <= pick["off"]["p99_ms"]
            ok = gain >= 3 and p99_ok
            lines.append(
                f"- digits onnx-fp32, {path}, concurrency 32: batching on/off throughput = "
                f"{gain:.2f}x, p99 {pick['on']['p99_ms']:.2f} vs {pick['off']['p99_ms']:.2f} ms "
                f"(target >= 3x, p99 no worse): {'met' if ok else 'NOT met'}"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    out = ["Cost per inference (batch 1, one thread, sequential; median per call):", "",
           "| model | raw ms | in-process ms | HTTP ms | in-process / raw | HTTP / raw |",
           "|---|--:|--:|--:|--:|--:|"]  # fmt: skip
    for model, c in results["cost"].items():
        out.append(f"| {model} | {c['raw_ms']:.3f} | {c['in_process_ms']:.3f} | {c['http_ms']:.3f} "
                   f"| {c['in_process_ratio']:.3f} | {c['http_ratio']:.2f} |")  # fmt: skip
    out += ["", "Throughput and latency (batch 1 per request; off = max_batch_size 1, on = "
            "max_batch_size 32 with no queue delay, on-2ms = max_batch_size 32, "
            "max_queue_delay_ms 2):",
            "",
            "| model | path | batching | concurrency | req/s | p50 ms | p99 ms |",
            "|---|---|---|--:|--:|--:|--:|"]  # fmt: skip
    for model, rows in results["throughput"].items():
        for r in rows:
            out.append(f"| {model} | {r['path']} | {r['batching']} | {r['concurrency']} "
                       f"| {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")  # fmt: skip
    out += ["", *check_targets(results)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark the agent's serving path.")
    parser.add_argument("--models", default="digits-onnx,digits-int8,mnv2-int8,mnv2-int8-float-io")
    parser.add_argument("--throughput-models", default="digits-onnx,mnv2-int8")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measured cell")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgedl-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "agent.json")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    if args.build_only:
        build_bundles(args.cache, models, build=True)
        return
    bundles = build_bundles(
        args.cache, sorted(set(models) | set(args.throughput_models.split(",")))
    )
    from edgedl.bundle import Bundle

    onnx_shape = (
        Bundle.open(bundles["digits-onnx"]).manifest.inputs[0].shape
        if "digits-onnx" in bundles
        else None
    )
    if onnx_shape is not None and onnx_shape[0] != -1:
        raise SystemExit(f"digits-onnx must have a dynamic batch dimension, has shape {onnx_shape}")
    results: dict[str, Any] = {"machine": machine(), "cost": {}, "throughput": {}}
    for model in models:
        print(f"cost: {model}", flush=True)
        results["cost"][model] = per_inference_cost(bundles[model], args.seconds)
    for model in args.throughput_models.split(","):
        print(f"throughput: {model}", flush=True)
        results["throughput"][model] = throughput(bundles[model], args.seconds)
    results["targets"] = check_targets(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
