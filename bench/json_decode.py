"""Benchmark decoding and encoding the Open Inference Protocol's JSON tensors, in process.

The request is MobileNetV2's input as JSON: 1x224x224x3 float32 values, uniform in [0, 1),
written as float32's shortest text by orjson (1.5 MiB), as bench/protocols.py sends it.
Each way of turning it into a float32 array is timed in alternating blocks (so a change in
the machine's load spreads over all of them), and its result checked bit for bit against
the first:

  json.loads + np.array   the standard library, then an array from the Python floats
  orjson + np.array       orjson, then an array from the Python floats (MLServer's way)
  agent decode_request    the agent's path: the "data" list cut out of the text and read by
                          simdjson a chunk at a time straight into float32 (json_tensors)

and the answer of the same size encoded by the agent (encode_response, orjson from the
array). Usage: python bench/json_decode.py [--seconds 5]. Prints a table and writes
bench/results/json_decode.json (with the machine).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent
SHAPE = [1, 224, 224, 3]


def _machine() -> dict[str, object]:
    spec = importlib.util.spec_from_file_location("bench_agent", ROOT / "agent.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    machine: dict[str, object] = module.machine()
    return machine


def main() -> None:
    from edgedl.agent.oip import decode_request, encode_response

    parser = argparse.ArgumentParser(description="JSON tensor decoding, in process.")
    parser.add_argument("--seconds", type=float, default=5.0, help="per way, in all")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "json_decode.json")
    args = parser.parse_args()
    x = np.random.default_rng(0).uniform(0, 1, SHAPE).astype(np.float32)
    doc = {"inputs": [{"name": "image", "shape": SHAPE, "datatype": "FP32", "data": x.ravel()}]}
    body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    decoded = decode_request(body, None, {"image": "FP32"}, 1024 * 1024)

    def stdlib() -> Any:
        return np.array(json.loads(body)["inputs"][0]["data"], np.float32).reshape(SHAPE)

    def with_orjson() -> Any:
        return np.array(orjson.loads(body)["inputs"][0]["data"], np.float32).reshape(SHAPE)

    def agent() -> Any:
        return decode_request(body, None, {"image": "FP32"}, 1024 * 1024).inputs["image"]

    def encode() -> Any:
        return encode_response("m", "1", decoded, {"out": x})

    ways: dict[str, Callable[[], Any]] = {
        "json.loads + np.array": stdlib,
        "orjson + np.array": with_orjson,
        "agent decode_request": agent,
        "agent encode_response": encode,
    }
    reference = stdlib().tobytes()
    for name in ("orjson + np.array", "agent decode_request"):
        assert ways[name]().tobytes() == reference, f"{name} differs from json.loads"
    times: dict[str, list[float]] = {name: [] for name in ways}
    deadline = time.monotonic() + args.seconds * len(ways)
    while time.monotonic() < deadline:
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - started)
    rows = [{"way": name, "calls": len(t), "median_ms": statistics.median(t) * 1000,
             "min_ms": min(t) * 1000} for name, t in times.items()]  # fmt: skip
    results = {"machine": _machine(), "body_bytes": len(body), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"body: {len(body)} bytes of JSON, {x.size} float32 values (bit-identical results)\n")
    print("| way | calls | median ms | min ms |\n|---|--:|--:|--:|")
    for r in rows:
        print(f"| {r['way']} | {r['calls']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} |")
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
