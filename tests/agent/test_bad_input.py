"""Hostile and mistaken requests: a 4xx that says what was wrong, and the agent keeps serving."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import RunningAgent, serve_in_process
from tests.agent.serving_helpers import (
    binary_body,
    digit_images,
    json_request,
    metric,
    output_of,
)

from edgedl import runtime
from edgedl.agent.config import AgentConfig, ModelConfig, ServerConfig

MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def agent(digits_bundle: Any) -> Iterator[RunningAgent]:
    config = AgentConfig(
        server=ServerConfig(max_request_bytes=MAX_BYTES),
        models=[ModelConfig(path=str(digits_bundle("tflite-int8")))],
    )
    with serve_in_process(config) as running:
        yield running


def good() -> dict[str, Any]:
    return json_request("pixels", digit_images(1))


def with_nan() -> dict[str, Any]:
    x = digit_images(2)
    x[1, 3, 3, 0] = np.nan
    x[0, 0, 0, 0] = np.inf
    return json_request("pixels", x)


def nan_binary() -> tuple[bytes, dict[str, str]]:
    x = digit_images(1)
    x[0, 1, 1, 0] = np.nan
    return binary_body("pixels", x)


def field(**changes: Any) -> dict[str, Any]:
    request = good()
    request["inputs"][0].update(changes)
    return request


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("wrong shape", {"json": json_request("pixels", np.zeros((1, 8, 8), np.float32))}, 400,
     "expected shape [?, 8, 8, 1], got [1, 8, 8]"),
    ("wrong datatype", {"json": field(datatype="INT64")}, 400,
     "expected datatype FP32, got 'INT64'"),
    ("unknown datatype", {"json": field(datatype="FLOAT")}, 400, "expected datatype FP32"),
    ("strings for numbers", {"json": field(data=["a"] * 64)}, 400, "not a list of FP32 numbers"),
    ("data does not fill the shape", {"json": field(data=[0.5] * 10)}, 400,
     "needs 64 values, the data holds 10"),
    ("negative dimension", {"json": field(shape=[1, 8, -8, 1])}, 400, "non-negative integers"),
    ("empty batch", {"json": field(shape=[0, 8, 8, 1], data=[])}, 400, "empty batch"),
    ("unknown input", {"json": field(name="image")}, 400, "unknown input 'image'"),
    ("no inputs", {"json": {"inputs": []}}, 400, '"inputs": a non-empty list'),
    ("NaN and Inf rejected", {"content": json.dumps(with_nan()).encode()}, 400,
     "holds 2 NaN/Inf values"),
    ("empty body", {"content": b""}, 400, "empty request body"),
    ("malformed JSON", {"content": b'{"inputs": [}'}, 400, "malformed JSON"),
    ("JSON that is not an object", {"content": b"[1, 2]"}, 400, "must be a JSON object"),
    ("JSON nested beyond reason", {"content": b'{"inputs": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"},
     400, "nested too deeply"),
    ("a number too large for FP32", {"content": json.dumps(field(data=[10**400] * 64)).encode()},
     400, "not a list of FP32 numbers"),
    ("oversized body", {"content": b"x" * (MAX_BYTES + 1)}, 413, "server.max_request_bytes"),
    ("oversized after gzip", {"content": gzip.compress(b" " * (MAX_BYTES * 4)),
                              "headers": {"Content-Encoding": "gzip"}}, 413,
     "decompressed request body exceeds"),
    ("not gzip", {"content": b"plain", "headers": {"Content-Encoding": "gzip"}}, 400,
     "not valid gzip"),
    ("header length beyond the body", {"content": json.dumps(good()).encode(),
                                       "headers": {"Inference-Header-Content-Length": "99999"}},
     400, "Inference-Header-Content-Length is 99999"),
    ("bad timeout", {"json": {**good(), "parameters": {"timeout_ms": -1}}}, 400,
     "'timeout_ms' must be a positive number"),
    ("unknown output", {"json": {**good(), "outputs": [{"name": "logits"}]}}, 400,
     "unknown output 'logits'"),
]  # fmt: skip


def binary_case(body: bytes, headers: dict[str, str], size: int | None = None) -> dict[str, Any]:
    if size is not None:
        header_len = int(headers["Inference-Header-Content-Length"])
        doc = json.loads(body[:header_len])
        doc["inputs"][0]["parameters"]["binary_data_size"] = size
        header = json.dumps(doc).encode()
        body = header + body[header_len:]
        headers = {"Inference-Header-Content-Length": str(len(header))}
    return {"content": body, "headers": headers}


BINARY_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("binary NaN rejected", binary_case(*nan_binary()), 400, "holds 1 NaN/Inf value"),
    ("binary size that does not fit the shape",
     binary_case(*binary_body("pixels", digit_images(1)), size=100), 400,
     "binary_data_size is 100"),
    ("binary data cut short", {**binary_case(*binary_body("pixels", digit_images(1)))}, 400,
     "body ends before"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "request_kwargs", "status", "message"),
    CASES + BINARY_CASES,
    ids=[c[0] for c in CASES + BINARY_CASES],
)
def test_bad_input_gets_a_4xx_saying_what_was_wrong_and_the_agent_keeps_serving(
    agent: RunningAgent, case: str, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    kwargs = dict(request_kwargs)
    if case == "binary data cut short":
        kwargs["content"] = kwargs["content"][:-10]
    url = f"{agent.url}/v2/models/digits/infer"
    response = httpx.post(url, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    after = httpx.post(url, json=good())
    assert after.status_code == 200


def test_an_unknown_model_is_404(agent: RunningAgent) -> None:
    response = httpx.post(f"{agent.url}/v2/models/cats/infer", json=good())
    assert response.status_code == 404
    assert response.json()["error"] == "unknown model 'cats' (serving: digits)"


def test_an_oversized_body_without_content_length_is_cut_off(agent: RunningAgent) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(8):
            yield b"x" * (MAX_BYTES // 4)

    response = httpx.post(f"{agent.url}/v2/models/digits/infer", content=chunks())
    assert response.status_code == 413
    assert httpx.post(f"{agent.url}/v2/models/digits/infer", json=good()).status_code == 200


def test_bad_requests_are_counted_as_errors(agent: RunningAgent) -> None:
    before = metric(httpx.get(f"{agent.url}/metrics").text, "edgedl_request_errors_total",
                    kind="bad_input")  # fmt: skip
    httpx.post(f"{agent.url}/v2/models/digits/infer", content=b"{")
    after = metric(httpx.get(f"{agent.url}/metrics").text, "edgedl_request_errors_total",
                   kind="bad_input")  # fmt: skip
    assert after == before + 1


def test_nonfinite_count_mode_accepts_and_counts_nan(digits_bundle: Any) -> None:
    config = AgentConfig(
        models=[ModelConfig(path=str(digits_bundle("tflite-int8")), nonfinite="count")]
    )
    with serve_in_process(config) as running:
        response = httpx.post(
            f"{running.url}/v2/models/digits/infer", content=json.dumps(with_nan()).encode()
        )
        assert response.status_code == 200
        text = httpx.get(f"{running.url}/metrics").text
        assert metric(text, "edgedl_input_nonfinite_values_total", model="digits") == 2
    # The int8 input takes NaN as 0 and saturates at +Inf.
    x = digit_images(2)
    x[1, 3, 3, 0] = 0.0
    x[0, 0, 0, 0] = 1e6
    expected = runtime.load(digits_bundle("tflite-int8")).run({"pixels": x})["output_0"]
    np.testing.assert_allclose(output_of(response, "output_0"), expected, atol=1e-6)
