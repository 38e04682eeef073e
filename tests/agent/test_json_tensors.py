"""Large JSON tensors read straight into arrays give exactly what the JSON parser gives."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from edgedl.agent.oip import BadRequest, decode_request, encode_response
from edgedl.agent.request_budget import PayloadTooLarge

LIMIT = 64 * 1024  # JSON decoded into Python objects; the number lists are larger


def request(
    data: Any, datatype: str = "FP32", shape: list[int] | None = None, **extra: Any
) -> bytes:
    """An infer request whose input ``x`` holds ``data``, written by the standard library."""
    flat = np.asarray(data).ravel()
    doc = {
        "inputs": [
            {"name": "x", "shape": shape or [flat.size], "datatype": datatype, "data": data}
        ],
        **extra,
    }
    return json.dumps(doc).encode()


def decode(body: bytes, datatype: str = "FP32") -> np.ndarray:
    return decode_request(body, None, {"x": datatype}, LIMIT).inputs["x"]


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP32", np.random.default_rng(0).random(20_000).tolist()),
        ("FP64", np.random.default_rng(1).normal(size=20_000).tolist()),
        ("FP16", (np.random.default_rng(2).random(20_000) * 100).tolist()),
        ("INT8", np.random.default_rng(3).integers(-128, 128, 20_000).tolist()),
        ("INT32", np.random.default_rng(4).integers(-(2**31), 2**31, 20_000).tolist()),
        ("UINT8", np.random.default_rng(5).integers(0, 256, 20_000).tolist()),
    ],
)
def test_flat_lists_decode_exactly_as_the_json_parser_would(
    datatype: str, values: list[Any]
) -> None:
    from edgedl.datatypes import NUMPY_DTYPES

    expected = np.array(values, dtype=NUMPY_DTYPES[datatype])
    for separators in ((", ", ": "), (",", ":")):
        doc = {"inputs": [{"name": "x", "shape": [len(values)], "datatype": datatype, "data": values}]}  # fmt: skip
        body = json.dumps(doc, separators=separators).encode()
        got = decode(body, datatype)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


def test_nested_lists_and_short_lists_take_the_parser_path() -> None:
    x = np.random.default_rng(6).random((4000, 3)).astype(np.float32)
    body = request(x.tolist(), shape=[4000, 3])
    decoded = decode_request(body, None, {"x": "FP32"}, 1024 * 1024)
    np.testing.assert_array_equal(decoded.inputs["x"], x)
    np.testing.assert_array_equal(decode(request([0.5, 1.5])), np.float32([0.5, 1.5]))


def test_other_strings_that_look_like_data_are_left_alone() -> None:
    values = [0.25] * 5000
    tricky = 'x", "data": [1, 2, 3]'
    body = request(values, id=tricky, parameters={"note": '"data": [4, 5]'})
    decoded = decode_request(body, None, {"x": "FP32"}, LIMIT)
    assert decoded.id == tricky
    np.testing.assert_array_equal(decoded.inputs["x"], np.float32(values))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"1,,2", "malformed JSON"),
        (b"1 2, 3", "malformed JSON"),
        (b"1, 2,", "malformed JSON"),
        (b"1-2, 3", "malformed JSON"),
    ],
)
def test_malformed_number_lists_are_400(text: bytes, message: str) -> None:
    padding = b", 0.5" * 5000
    body = (
        b'{"inputs": [{"name": "x", "shape": [5003], "datatype": "FP32", "data": ['
        + text
        + padding
        + b"]}]}"
    )
    with pytest.raises(BadRequest, match=message):
        decode_request(body, None, {"x": "FP32"}, 1024 * 1024)


def test_integers_out_of_range_are_400_not_wrapped() -> None:
    with pytest.raises(BadRequest, match="not a list of INT8 numbers"):
        decode_request(request([1] * 5000 + [300], "INT8"), None, {"x": "INT8"}, 1024 * 1024)


def test_json_beyond_the_object_bound_is_413() -> None:
    nested = np.zeros((20_000, 3)).tolist()  # nested: no shortcut, ~300 kB of parser work
    with pytest.raises(PayloadTooLarge, match=r"server\.max_json_object_bytes"):
        decode(request(nested, shape=[20_000, 3]))


def test_answers_round_trip_and_keep_nan() -> None:
    decoded = decode_request(request([1.0, 2.0]), None, {"x": "FP32"})
    finite = np.float32([[0.1, 2.5], [3.0, -4.0]])
    body, header_length = encode_response("m", "1", decoded, {"y": finite})
    assert header_length is None
    out = json.loads(body)["outputs"][0]
    assert out["shape"] == [2, 2] and out["datatype"] == "FP32"
    np.testing.assert_array_equal(np.float32(out["data"]).reshape(2, 2), finite)
    body, _ = encode_response("m", "1", decoded, {"y": np.float32([np.nan, 1.0])})
    assert json.loads(body)["outputs"][0]["data"][0] != json.loads(body)["outputs"][0]["data"][0]


def _hard_floats() -> list[float]:
    """Values whose float32 rounding is easy to get wrong: long digits, halfway cases, extremes."""
    rng = np.random.default_rng(7)
    f32 = rng.standard_normal(3000).astype(np.float32)
    halfway = (f32.astype(np.float64) + np.spacing(f32).astype(np.float64) / 2).tolist()
    wide = (rng.standard_normal(3000) * 10.0 ** rng.integers(-45, 39, 3000)).tolist()
    extremes = [5e-324, 1.4e-45, 7e-46, 3.4028235e38, 3.4028236e38, -0.0, 0.0, 1e-320]
    return halfway + wide + extremes


def test_floats_parse_bit_for_bit_as_json_loads_then_float32() -> None:
    values = _hard_floats()
    body = json.dumps({"inputs": [{"name": "x", "shape": [len(values)], "datatype": "FP32",
                                   "data": values}]}).encode()  # fmt: skip
    with np.errstate(over="ignore"):
        expected = np.array(json.loads(body)["inputs"][0]["data"], dtype=np.float32)
    got = decode(body)
    assert got.tobytes() == expected.tobytes()


def test_lists_longer_than_a_parser_chunk_parse_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgedl.agent import json_tensors

    monkeypatch.setattr(json_tensors, "CHUNK_BYTES", 1000)
    values = np.random.default_rng(8).random(30_000).tolist()
    got = decode(request(values))
    assert got.tobytes() == np.array(values, dtype=np.float32).tobytes()
    with pytest.raises(BadRequest, match="malformed JSON"):
        decode(request(values)[:-4] + b", ]}]}")  # a trailing comma after a chunk's end


@pytest.mark.parametrize("number", [b"+1", b".5", b"01", b"1.", b"0x10", b"1e"])
def test_numbers_json_does_not_allow_are_400(number: bytes) -> None:
    body = request([0.5] * 5000).replace(b"[0.5, ", b"[" + number + b", ", 1)
    with pytest.raises(BadRequest, match="malformed JSON"):
        decode(body)


def test_non_numbers_and_wrong_counts_are_400_and_nan_is_kept() -> None:
    values: list[Any] = [0.5] * 5000
    with pytest.raises(BadRequest, match="not a list of FP32 numbers"):
        decode(request([*values, "0.5"]))
    with pytest.raises(BadRequest, match="not a list of FP32 numbers"):
        decode(request([*values, None]))
    with pytest.raises(BadRequest, match="needs 5002 values, the data holds 5001"):
        decode(request([*values, 1.0], shape=[5002]))
    with pytest.raises(BadRequest, match="needs 4000 values, the data holds 5001"):
        decode(request([*values, 1.0], shape=[4000]))
    got = decode(request([*values, float("nan")]))
    assert np.isnan(got[-1]) and got.size == 5001
    with pytest.raises(BadRequest):
        decode(request([*[1] * 5000, float("nan")], "INT32"), "INT32")
