"""Benchmark the agent against MLServer, a peer Open Inference Protocol server, on one load.

Both serve the same bundle's .onnx file with ONNX Runtime on one intra-op thread: the agent
as ``edgedl agent serve`` (threads = 1), MLServer 1.7 with a custom runtime (written here
into its model folder: an ``onnxruntime.InferenceSession`` with one intra-op and one
inter-op thread, inputs and outputs through MLServer's NumpyCodec; ``parallel_workers`` 0,
so inference runs in the server process, like the agent's). Each server is started alone,
pinned to core 0 with ``taskset``, and loaded by ``wrk`` pinned to core 1 with the identical
Open Inference Protocol JSON body (a flat ``data`` list of float32 written as their shortest
text). Rounds alternate which server goes first, so a change in the machine's load does not
land on one server only; a cell's figure is the median over its rounds. Before each load the
first output of one request is compared bit for bit between the two servers.

Models (bench/agent.py converts them once under --cache, with TensorFlow in a child process):
  digits        the digits CNN as onnx-fp32 (8x8x1 input, a 256-byte tensor)
  mobilenetv2   keras.applications.MobileNetV2(weights=None) as onnx-fp32: random weights,
                so the outputs mean nothing, but the compute and tensor sizes are the real
                network's (224x224x3 float32 in: a 1.5 MiB JSON body; 1000 out)

Batching: off (agent max_batch_size 1; MLServer max_batch_size 0) and on (agent
max_batch_size 32 with no queue delay, its default; MLServer max_batch_size 32 with
max_batch_time 2 ms, as MLServer's adaptive batching needs a positive window).

Needs: MLServer 1.7 in its own virtual environment (its dependencies clash with edgedl's):

    python3 -m venv /opt/mlserver && /opt/mlserver/bin/pip install "mlserver==1.7.1" onnxruntime
    export EDGEDL_MLSERVER=/opt/mlserver/bin/mlserver      # or --mlserver PATH

and wrk (Debian: apt-get install wrk), taskset (util-linux) and two cores.

Usage: python bench/peer_mlserver.py [--seconds 3] [--rounds 2] [--models digits,mobilenetv2]
Prints a markdown table and writes bench/results/peer_mlserver.json (with the machine and its
load average while it ran). Not part of the test run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
MODELS = {"digits": "digits-onnx", "mobilenetv2": "mnv2-onnx"}
CONCURRENCY = (1, 8, 32)
BATCHING = ("off", "on")
SERVER_CORE, LOAD_CORE = "0", "1"
INSTALL = """MLServer not found. Install it in its own virtual environment and point the bench at it:

    python3 -m venv /opt/mlserver
    /opt/mlserver/bin/pip install "mlserver==1.7.1" onnxruntime
    export EDGEDL_MLSERVER=/opt/mlserver/bin/mlserver   # or: --mlserver /opt/mlserver/bin/mlserver
"""

RUNTIME = '''"""An MLServer runtime over an .onnx file: ONNX Runtime, one thread (written by edgedl's bench)."""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = await get_model_uri(self._settings)
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        values = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output(n, v) for n, v in zip(self._outputs, values)],
        )
'''

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open(os.getenv("EDGEDL_BENCH_BODY"), "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.1f %.1f %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status,
    e.connect + e.read + e.write + e.timeout))
end
"""


def _bench_module(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_mlserver(given: str | None) -> str:
    """The ``mlserver`` executable: --mlserver, $EDGEDL_MLSERVER or the PATH; else exit."""
    for candidate in (given, os.environ.get("EDGEDL_MLSERVER"), shutil.which("mlserver")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit(INSTALL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MLServerProcess:
    """``mlserver start`` on a model folder holding the runtime and the .onnx file."""

    def __init__(self, mlserver: str, name: str, onnx: Path, batching: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="edgedl-bench-mlserver-")
        root = Path(self._dir.name)
        self.port = _free_port()
        settings = {"debug": False, "parallel_workers": 0, "host": "127.0.0.1",
                    "http_port": self.port, "grpc_port": _free_port(),
                    "metrics_port": _free_port()}  # fmt: skip
        (root / "settings.json").write_text(json.dumps(settings))
        model_dir = root / name
        model_dir.mkdir()
        (model_dir / "onnx_runtime.py").write_text(RUNTIME)
        shutil.copy(onnx, model_dir / "model.onnx")
        model = {"name": name, "implementation": "onnx_runtime.OnnxModel",
                 "parameters": {"uri": "./model.onnx"}}  # fmt: skip
        if batching == "on":
            model.update(max_batch_size=32, max_batch_time=0.002)
        (model_dir / "model-settings.json").write_text(json.dumps(model))
        self._log = open(root / "mlserver.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, mlserver, "start", str(root)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=root,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        _wait_ready(self.url, name, self.proc, root / "mlserver.log")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self._log.close()
        self._dir.cleanup()


def _wait_ready(url: str, name: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/models/{name}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"MLServer did not start:\n{log.read_text(errors='replace')[-3000:]}")


def json_body(input_name: str, x: np.ndarray) -> bytes:
    """The Open Inference Protocol JSON request both servers get."""
    import orjson

    doc = {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                       "data": x.ravel()}]}  # fmt: skip
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def first_output(url: str, name: str, body: bytes) -> np.ndarray:
    import httpx

    answer = httpx.post(f"{url}/v2/models/{name}/infer", content=body, timeout=60,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    answer.raise_for_status()
    out = answer.json()["outputs"][0]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def wrk(url: str, body_file: Path, lua: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """One wrk run on the load core; requests/s, p50 and p99 in ms, errors."""
    load_before = os.getloadavg()[0]
    run = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s",
         "--timeout", "30s", "-s", str(lua), url],
        capture_output=True, text=True, env={**os.environ, "EDGEDL_BENCH_BODY": str(body_file)},
        check=True,
    )  # fmt: skip
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    requests, duration_us, p50, p99, status_errors, socket_errors = line.split()[1:]
    return {"rps": int(requests) / (int(duration_us) / 1e6), "p50_ms": float(p50) / 1000,
            "p99_ms": float(p99) / 1000, "errors": int(status_errors) + int(socket_errors),
            "load_avg": [load_before, os.getloadavg()[0]]}  # fmt: skip


def measure(model: str, bundle: Path, batching: str, mlserver: str, work: Path,
            seconds: float, rounds: int) -> list[dict[str, Any]]:  # fmt: skip
    """Every concurrency against each server, alone, in alternating rounds."""
    from edgedl.bundle import Bundle

    bench = _bench_module("agent")
    manifest = Bundle.open(bundle).manifest
    spec = manifest.inputs[0]
    x = np.random.default_rng(0).uniform(0, 1, [1, *spec.shape[1:]]).astype(np.float32)
    body_file = work / f"{model}.json"
    body_file.write_bytes(json_body(spec.name, x))
    lua = work / "post.lua"
    lua.write_text(LUA)
    agent_batching = {"max_batch_size": 1} if batching == "off" else {"max_batch_size": 32}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    outputs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        order = ("agent", "mlserver") if r % 2 == 0 else ("mlserver", "agent")
        for server in order:
            if server == "agent":
                proc: Any = bench.AgentSubprocess(bundle, prefix=("taskset", "-c", SERVER_CORE),
                                                  **agent_batching)  # fmt: skip
                name = proc.name
            else:
                proc = MLServerProcess(mlserver, manifest.name, bundle / manifest.model_file,
                                       batching)  # fmt: skip
                name = manifest.name
            try:
                url = f"{proc.url}/v2/models/{name}/infer"
                outputs[server] = first_output(proc.url, name, body_file.read_bytes())
                for c in CONCURRENCY:
                    runs.setdefault((server, c), []).append(wrk(url, body_file, lua, c, seconds))
            finally:
                proc.stop()
    same = outputs["agent"].tobytes() == outputs["mlserver"].tobytes()
    rows = []
    for c in CONCURRENCY:
        row: dict[str, Any] = {"model": model, "batching": batching, "concurrency": c,
                               "outputs_identical": same}  # fmt: skip
        for server in ("agent", "mlserver"):
            cell = runs[(server, c)]
            row[server] = {key: statistics.median(run[key] for run in cell)
                           for key in ("rps", "p50_ms", "p99_ms")}  # fmt: skip
            row[server]["errors"] = sum(run["errors"] for run in cell)
            row[server]["load_avg"] = [run["load_avg"] for run in cell]
        a, m = row["agent"], row["mlserver"]
        row["rps_ratio"] = a["rps"] / m["rps"] if m["rps"] else None  # None: nothing answered
        row["p99_ratio"] = a["p99_ms"] / m["p99_ms"] if a["rps"] and m["rps"] else None
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| model | batching | conc. | agent req/s | MLServer req/s | ratio | agent p99 ms "
           "| MLServer p99 ms | p99 ratio | errors | outputs identical |",
           "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]  # fmt: skip
    for r in rows:
        a, m = r["agent"], r["mlserver"]
        ratio = "-" if r["rps_ratio"] is None else f"{r['rps_ratio']:.2f}x"
        p99_ratio = "-" if r["p99_ratio"] is None else f"{r['p99_ratio']:.2f}"
        out.append(f"| {r['model']} | {r['batching']} | {r['concurrency']} | {a['rps']:.1f} "
                   f"| {m['rps']:.1f} | {ratio} | {a['p99_ms']:.1f} | {m['p99_ms']:.1f} "
                   f"| {p99_ratio} | {a['errors']}/{m['errors']} "
                   f"| {'yes' if r['outputs_identical'] else 'NO'} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="The agent against MLServer, same load.")
    parser.add_argument("--models", default="digits,mobilenetv2")
    parser.add_argument("--batching", default="off,on")
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell")
    parser.add_argument("--mlserver", help="the mlserver executable (or $EDGEDL_MLSERVER)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgedl-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "peer_mlserver.json")
    args = parser.parse_args()
    mlserver = find_mlserver(args.mlserver)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(
                f"{tool} not found: apt-get install {'wrk' if tool == 'wrk' else 'util-linux'}"
            )
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores: one for the server, one for wrk")
    models = args.models.split(",")
    bundles = _bench_module("agent").build_bundles(args.cache, [MODELS[m] for m in models])
    results: dict[str, Any] = {"machine": _bench_module("agent").machine(),
                               "mlserver": subprocess.run([mlserver, "--version"],
                                                          capture_output=True, text=True).stdout.strip(),
                               "seconds": args.seconds, "rounds": args.rounds,
                               "load_avg_start": os.getloadavg(), "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="edgedl-bench-peer-") as work:
        for model in models:
            for batching in args.batching.split(","):
                print(f"{model}, batching {batching}", flush=True)
                rows = measure(model, bundles[MODELS[model]], batching, mlserver, Path(work),
                               args.seconds, args.rounds)  # fmt: skip
                print(markdown(rows), flush=True)
                results["rows"] += rows
                results["load_avg_end"] = os.getloadavg()
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=2) + "\n")  # so far
    print("\n" + markdown(results["rows"]))
    print(f"\nload average {results['load_avg_start'][0]:.1f} at the start, "
          f"{results['load_avg_end'][0]:.1f} at the end; JSON written to {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
