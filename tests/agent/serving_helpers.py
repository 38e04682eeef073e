"""Small helpers for the serving tests: sample inputs, raw OIP requests, reading /metrics."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from prometheus_client.parser import text_string_to_metric_families


def digit_images(n: int, start: int = 0) -> NDArray[np.float32]:
    """``n`` real 8x8 digits from scikit-learn, scaled to [0, 1], shaped (n, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    images = load_digits().images[start : start + n]
    return (images / 16.0).astype(np.float32)[..., None]


def json_request(name: str, x: NDArray[Any], datatype: str = "FP32") -> dict[str, Any]:
    """An infer request with the tensor as JSON data."""
    return {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
        ]
    }


def binary_body(
    name: str, x: NDArray[Any], binary_output: bool = True
) -> tuple[bytes, dict[str, str]]:
    """An infer request body with the tensor as binary data, and its headers."""
    blob = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": binary_output},
        }
    ).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def output_of(response: httpx.Response, name: str) -> NDArray[np.float32]:
    """One output tensor from an infer response (JSON or binary)."""
    length = response.headers.get("Inference-Header-Content-Length")
    body = response.content
    split = int(length) if length else len(body)
    doc = json.loads(body[:split])
    offset = split
    for out in doc["outputs"]:
        size = (out.get("parameters") or {}).get("binary_data_size")
        if out["name"] == name:
            if size is not None:
                data = np.frombuffer(body[offset : offset + size], dtype="<f4")
            else:
                data = np.asarray(out["data"], dtype=np.float32)
            return data.reshape(out["shape"])
        offset += size or 0
    raise KeyError(name)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def send_and_wait_queued(url: str, send: Callable[[int], None], n: int, within: float) -> list[Any]:
    """Start ``send(i)`` for ``i < n`` on threads; return them once the agent at ``url``
    reports ``n`` requests queued (fails after ``within`` seconds)."""
    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + within
    while metric(httpx.get(f"{url}/metrics").text, "edgedl_queue_depth") < n:
        assert time.monotonic() < deadline, "the requests never queued"
        time.sleep(0.02)
    return threads
