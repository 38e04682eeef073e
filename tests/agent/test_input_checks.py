"""The agent's per-request input checks and output dequantization, in process.

NaN/Inf anywhere in a request is found however large the other values are, huge finite
values are not taken for Inf, and the agent's dequantization equals the runtime's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from tests.agent.conftest import make_onnx_bundle

from edgedl.agent.config import ModelConfig
from edgedl.agent.quantization import OutputDequantizer
from edgedl.agent.served import BadInput, Observers, ServedModel
from edgedl.bundle import Quantization, TensorSpec
from edgedl.runtime import dequantize

BIG = np.finfo(np.float32).max


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedModel]:
    """A served ONNX model that returns its float input ``x [n, 3]`` unchanged."""
    from onnx import helper

    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    path = make_onnx_bundle(tmp_path_factory.mktemp("echo"), "echo", nodes, [], "n")
    model = ServedModel.load(path, ModelConfig(path=str(path), threads=1), Observers())
    model.start()
    yield model
    model.stop()


def test_huge_finite_values_whose_sum_overflows_are_served(echo: ServedModel) -> None:
    x = np.full((4000, 3), BIG, np.float32)  # sums to +Inf in float32 and float64 alike
    x[::2] = -BIG
    x[1, 1] = BIG
    out = echo.infer({"x": x})["y"]
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("position", [0, 1, 5999, 11999])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_one_nan_or_inf_anywhere_is_rejected(
    echo: ServedModel, position: int, value: float
) -> None:
    x = np.full((4000, 3), 0.5, np.float32)
    x[::3] = BIG  # large finite neighbours must not hide it (or be counted)
    x.flat[position] = value
    with pytest.raises(BadInput, match="holds 1 NaN/Inf value "):
        echo.infer({"x": x})


def test_nan_and_opposite_infinities_are_counted_together(echo: ServedModel) -> None:
    x = np.zeros((10, 3), np.float64)  # a float64 request is checked as it came
    x[0, 0], x[5, 1], x[9, 2] = np.inf, -np.inf, np.nan
    with pytest.raises(BadInput, match="holds 3 NaN/Inf values"):
        echo.infer({"x": x})


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point"),
    [("int8", 0.015210656449198723, 0), ("int8", 0.00390625, -128), ("uint8", 0.1, 3)],
)
def test_output_dequantization_equals_the_runtimes(
    dtype: str, scale: float, zero_point: int
) -> None:
    quantized = TensorSpec(
        name="q", shape=[-1, 256], dtype=dtype,
        quantization=Quantization(scale=scale, zero_point=zero_point),
    )  # fmt: skip
    plain = TensorSpec(name="f", shape=[-1, 4], dtype="float32")
    info = np.iinfo(dtype)
    raw = {
        "q": np.arange(info.min, info.max + 1, dtype=dtype).reshape(1, 256),
        "f": np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4),
    }
    out = OutputDequantizer([quantized, plain])(raw)
    for spec in (quantized, plain):
        expected = dequantize(raw[spec.name], spec)
        assert out[spec.name].dtype == expected.dtype == np.float32
        np.testing.assert_array_equal(out[spec.name], expected)


def test_unknown_missing_and_misshapen_inputs_say_what_is_wrong(echo: ServedModel) -> None:
    ok = np.zeros((2, 3), np.float32)
    cases = [
        ({"x": ok, "z": ok}, "unknown input 'z'"),
        ({}, "missing input 'x'"),
        ({"x": np.zeros((2, 4), np.float32)}, r"expected shape \[\?, 3\], got \[2, 4\]"),
        ({"x": np.zeros((2, 3, 1), np.float32)}, r"expected shape \[\?, 3\], got \[2, 3, 1\]"),
        ({"x": np.zeros((0, 3), np.float32)}, "empty batch"),
        ({"x": np.array([["a", "b", "c"]])}, "expected numbers"),
    ]
    for inputs, message in cases:
        with pytest.raises(BadInput, match=message):
            echo.infer(inputs)
