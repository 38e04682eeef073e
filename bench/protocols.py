"""Benchmark the agent's request paths side by side: HTTP JSON, HTTP binary tensors and gRPC.

One ``edgedl agent serve`` subprocess per model (one interpreter thread, batching on with no
queue delay, the default), serving HTTP and gRPC at once; every (protocol, concurrency) cell
is measured in blocks of half a second taken in rotation, so a change in the machine's load
spreads over every cell. The clients run in this process:

  http-json    the protocol's JSON tensors (a flat "data" list of float32 written as their
               shortest text: 1.0 MiB for image-224), keep-alive connections of
               the minimal asyncio HTTP client of bench/agent.py
  http-binary  the binary tensor data extension, binary outputs, the same client
  http-binary-unix  the same over the agent's Unix domain socket (server.unix_socket)
  http-shm     the input in a system shared memory region (the one grpc-shm uses: the agent
               holds one set of regions for both APIs), outputs binary in the answer
  grpc         ModelInfer with raw_input_contents (what tritonclient.grpc sends), one
               grpc.aio channel (its own connection) per concurrent caller, the message
               serialised once up front
  grpc-shm     the same with the input in a system shared memory region registered once
               (server.shared_memory; the client writes the input there once: a camera
               process would write each frame), outputs raw in the answer

Models:
  digits-onnx  the digits CNN as onnx-fp32 (bench/agent.py builds it once, with TensorFlow in
               a child process, under --cache)
  image-224    an ONNX graph with MobileNetV2's input and output sizes (224x224x3 in, 1000
               out) and almost no compute (a mean over the pixels and a 3x1000 MatMul): what
               is left is the cost of moving a 588 KiB tensor through each protocol

Usage: python bench/protocols.py [--seconds 2] [--models digits-onnx,image-224]
Prints a markdown table and writes bench/results/protocols.json (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
PROTOCOLS = ("http-json", "http-binary", "http-binary-unix", "http-shm", "grpc", "grpc-shm")
CONCURRENCY = (1, 8)
BLOCK_S = 0.5
Block = tuple[list[float], float, int]  # latencies, seconds, errors


def _bench_module(name: str) -> Any:
    """``bench/<name>.py``, loaded as a module (bench/ is a folder of scripts)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_224_bundle(out: Path) -> Path:
    """A bundle of a cheap ONNX graph ``image [n, 224, 224, 3] -> logits [n, 1000]``."""
    if (out / "image224" / "manifest.json").is_file():
        return out / "image224"
    from onnx import TensorProto, helper, numpy_helper

    from edgedl.bundle import TensorSpec

    weights = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
        ],
        "image224",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 224, 224, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1000])],
        [numpy_helper.from_array(weights, "w")],
    )
    out.mkdir(parents=True, exist_ok=True)
    return _bench_module("agent_memory").onnx_bundle(
        out,
        graph,
        [TensorSpec(name="image", shape=[-1, 224, 224, 3], dtype="float32")],
        [TensorSpec(name="logits", shape=[-1, 1000], dtype="float32")],
    )


def json_request(name: str, x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A JSON infer request, its numbers written as float32's shortest text (as orjson does)."""
    import orjson

    doc = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                       "data": x.ravel()}]}  # fmt: skip
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return body, {"Content-Type": "application/json"}


def shm_request(name: str, x: np.ndarray, region: str) -> tuple[bytes, dict[str, str]]:
    """An HTTP infer request whose input ``x`` lies in shared memory ``region``."""
    params = {"shared_memory_region": region, "shared_memory_byte_size": x.nbytes}
    doc = {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                       "parameters": params}], "parameters": {"binary_data_output": True}}  # fmt: skip
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def grpc_request(model: str, name: str, x: np.ndarray, region: str | None = None) -> bytes:
    """A serialised ModelInferRequest: ``x`` raw, or pointing at shared memory ``region``."""
    from edgedl.agent.oip_grpc.messages import ModelInferRequest

    request = ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype="FP32", shape=list(x.shape))
    if region is None:
        request.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
    else:
        tensor.parameters["shared_memory_region"].string_param = region
        tensor.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    serialized: bytes = request.SerializeToString()
    return serialized


def shared_input(port: int, x: np.ndarray) -> Any:
    """``x`` in a new POSIX shared memory object, registered with the agent as region "bench"."""
    from multiprocessing import shared_memory

    import grpc

    from edgedl.agent.oip_grpc.messages import message_class

    memory = shared_memory.SharedMemory(create=True, size=x.nbytes)
    np.ndarray(x.shape, np.float32, buffer=memory.buf)[:] = x
    register = message_class("SystemSharedMemoryRegisterRequest")(
        name="bench", key=f"/{memory.name}", byte_size=x.nbytes
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        channel.unary_unary("/inference.GRPCInferenceService/SystemSharedMemoryRegister")(
            register.SerializeToString(), timeout=10
        )
    return memory


async def _load_grpc(bench: Any, port: int, message: bytes, concurrency: int,
                     seconds: float) -> Block:  # fmt: skip
    """``concurrency`` callers, each on its own channel, sending ``message`` back to back."""
    import grpc
    from grpc import aio

    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
    channels: list[aio.Channel] = []

    async def call(infer: Any) -> bool:
        try:
            await infer(message)
        except grpc.RpcError:
            return False
        return True

    async def connect() -> Callable[[], Awaitable[bool]]:
        channels.append(aio.insecure_channel(f"127.0.0.1:{port}", options=options))
        infer = channels[-1].unary_unary("/inference.GRPCInferenceService/ModelInfer")
        return lambda: call(infer)

    try:
        result: Block = await bench.closed_loop(connect, concurrency, seconds)
        return result
    finally:
        for channel in channels:
            await channel.close()


def measure(bench: Any, bundle: Path, seconds: float) -> list[dict[str, Any]]:
    """Every (protocol, concurrency) cell against one agent, in rotation."""
    from edgedl.bundle import Bundle

    manifest = Bundle.open(bundle).manifest
    spec = manifest.inputs[0]
    x = np.random.default_rng(0).uniform(0, 1, [1, *spec.shape[1:]]).astype(np.float32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        grpc_port = s.getsockname()[1]
    unix_socket = f"/tmp/edgedl-bench-{os.getpid()}.sock"
    server = {"grpc_port": grpc_port, "unix_socket": unix_socket, "shared_memory": True}
    agent = bench.AgentSubprocess(bundle, server=server, max_batch_size=32)
    memory = shared_input(grpc_port, x)
    path = f"/v2/models/{manifest.name}/infer"
    binary = bench.binary_request(spec.name, x)
    bodies = {"http-json": json_request(spec.name, x), "http-binary": binary,
              "http-binary-unix": binary, "http-shm": shm_request(spec.name, x, "bench")}  # fmt: skip
    messages = {"grpc": grpc_request(manifest.name, spec.name, x),
                "grpc-shm": grpc_request(manifest.name, spec.name, x, region="bench")}  # fmt: skip
    blocks: dict[tuple[str, int], list[Block]] = {}
    try:
        for _ in range(max(1, round(seconds / BLOCK_S))):
            for protocol in PROTOCOLS:
                for c in CONCURRENCY:
                    if protocol in messages:
                        load = _load_grpc(bench, grpc_port, messages[protocol], c, BLOCK_S)
                    else:
                        body, headers = bodies[protocol]
                        where = unix_socket if protocol.endswith("unix") else agent.port
                        load = bench._load_http(where, path, body, headers, c, BLOCK_S)
                    blocks.setdefault((protocol, c), []).append(asyncio.run(load))
    finally:
        agent.stop()
        memory.close()
        memory.unlink()
    return [{"protocol": protocol, "concurrency": c, **bench._summary(measured)}
            for (protocol, c), measured in blocks.items()]  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    out = ["| model | protocol | concurrency | req/s | p50 ms | p99 ms | errors |",
           "|---|---|--:|--:|--:|--:|--:|"]  # fmt: skip
    for model, rows in results["throughput"].items():
        for r in rows:
            out.append(f"| {model} | {r['protocol']} | {r['concurrency']} "
                       f"| {r['throughput_rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                       f"| {r['errors']} |")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP JSON vs HTTP binary vs gRPC.")
    parser.add_argument("--models", default="digits-onnx,image-224")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measured cell")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "edgedl-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "protocols.json")
    args = parser.parse_args()
    bench = _bench_module("agent")
    models = args.models.split(",")
    bundles = {m: image_224_bundle(args.cache) for m in models if m == "image-224"}
    if "digits-onnx" in models:
        bundles["digits-onnx"] = bench.build_bundles(args.cache, ["digits-onnx"])["digits-onnx"]
    results: dict[str, Any] = {"machine": bench.machine(), "seconds": args.seconds,
                               "throughput": {}}  # fmt: skip
    for model in models:
        print(f"throughput: {model}", flush=True)
        results["throughput"][model] = measure(bench, bundles[model], args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
