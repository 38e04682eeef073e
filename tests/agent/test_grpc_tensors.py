"""gRPC ModelInfer messages to arrays and back: what a client gets for each kind of tensor."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgedl.agent.oip import BadRequest, InferenceRequest, RequestedOutput
from edgedl.agent.oip_grpc.messages import ModelInferRequest, ModelInferResponse
from edgedl.agent.oip_grpc.tensors import decode_infer_request, encode_infer_response


def request(*inputs: tuple[str, str, list[int]], raw: list[bytes] | None = None) -> Any:
    message = ModelInferRequest(model_name="m")
    for name, datatype, shape in inputs:
        message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.raw_input_contents.extend(raw or [])
    return message


def test_typed_integers_are_range_checked_and_fp16_must_be_raw() -> None:
    small = request(("x", "INT8", [1, 2]))
    small.inputs[0].contents.int_contents.extend([1, 300])
    with pytest.raises(
        BadRequest, match=r"int_contents holds values outside the range of INT8 \[-128, 127\]"
    ):
        decode_infer_request(small, {"x": "INT8"})
    small.inputs[0].contents.int_contents[1] = -128
    decoded = decode_infer_request(small, {"x": "INT8"})
    assert decoded.inputs["x"].dtype == np.int8
    assert decoded.inputs["x"].tolist() == [[1, -128]]
    assert decoded.binary_output is False
    half = request(("h", "FP16", [1]))
    with pytest.raises(BadRequest, match="FP16 travels only as raw_input_contents"):
        decode_infer_request(half, {"h": "FP16"})
    raw_half = request(("h", "FP16", [2]), raw=[np.array([1.5, -2], "<f2").tobytes()])
    assert decode_infer_request(raw_half, {"h": "FP16"}).inputs["h"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (request(("x", "FP32", [1])), "needs 1 values, its fp32_contents holds 0"),
        (request(("x", "FP32", [1]), raw=[b"", b""]), "holds 2 tensors but the request lists 1"),
        (
            request(("x", "FP32", [1]), ("x", "FP32", [1]), raw=[b"\0" * 4] * 2),
            "input 'x' is given twice",
        ),
        (request(("x", "FP32", [-1])), "non-negative sizes, got [-1]"),
        (request(("x", "FP32", [])), "non-negative sizes, got []"),
        (request(("y", "FP32", [1])), "unknown input 'y' (the model's inputs: ['x'])"),
        (request(), "the request has no inputs"),
    ],
)
def test_malformed_requests_say_what_is_wrong(message: Any, error: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_infer_request(message, {"x": "FP32"})
    assert error in str(info.value)


def test_timeout_parameters_in_microseconds_or_milliseconds() -> None:
    message = request(("x", "FP32", [1]), raw=[b"\0\0\0\0"])
    message.parameters["timeout"].int64_param = 250_000
    assert decode_infer_request(message, {"x": "FP32"}).timeout_s == pytest.approx(0.25)
    message.parameters["timeout"].bool_param = True
    with pytest.raises(BadRequest, match="'timeout' must be a positive number"):
        decode_infer_request(message, {"x": "FP32"})
    del message.parameters["timeout"]
    message.parameters["timeout_ms"].double_param = 40.0
    assert decode_infer_request(message, {"x": "FP32"}).timeout_s == pytest.approx(0.04)


def test_answers_are_raw_for_raw_requests_typed_otherwise_and_raw_whenever_fp16() -> None:
    outputs = {"p": np.array([[0.25, 0.75]], np.float32), "k": np.array([7], np.int64)}
    raw = InferenceRequest(id="a", inputs={}, outputs=None, binary_output=True, timeout_s=None)
    answer = ModelInferResponse.FromString(
        encode_infer_response("m", "1", raw, outputs).SerializeToString()
    )
    assert answer.id == "a"
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("p", "FP32", [1, 2]),
        ("k", "INT64", [1]),
    ]
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").tolist() == [0.25, 0.75]
    typed = InferenceRequest(id=None, inputs={}, outputs=None, binary_output=False, timeout_s=None)
    answer = encode_infer_response("m", "1", typed, outputs)
    assert not answer.raw_output_contents
    assert list(answer.outputs[0].contents.fp32_contents) == [0.25, 0.75]
    assert list(answer.outputs[1].contents.int64_contents) == [7]
    half = encode_infer_response("m", "1", typed, {"h": np.array([1.5], np.float16)})
    assert np.frombuffer(half.raw_output_contents[0], "<f2").tolist() == [1.5]
    typed.outputs = [RequestedOutput("nope", False)]
    with pytest.raises(BadRequest, match="unknown output 'nope'"):
        encode_infer_response("m", "1", typed, outputs)
