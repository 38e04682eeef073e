"""The agent's buffered quantizer gives exactly what edgedl.runtime.quantize gives."""

from __future__ import annotations

import numpy as np
import pytest

from edgedl.agent.served import InputQuantizer
from edgedl.bundle import Quantization, TensorSpec
from edgedl.runtime import quantize


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point"), [("int8", 0.0078125, -1), ("uint8", 0.0039, 128)]
)
def test_buffered_quantization_equals_the_runtimes(
    dtype: str, scale: float, zero_point: int
) -> None:
    spec = TensorSpec(
        name="x", shape=[-1, 16, 3], dtype=dtype,
        quantization=Quantization(scale=scale, zero_point=zero_point),
    )  # fmt: skip
    quantizer = InputQuantizer([spec])
    rng = np.random.default_rng(0)
    for n, data_type in ((1, np.float32), (4, np.float32), (4, np.float64), (1, np.float32)):
        x = rng.normal(0, 2, (n, 16, 3)).astype(data_type)
        x.flat[:20] = (np.arange(20) - 10) * scale * 0.5  # exact ties round half to even
        x.flat[20] = 1e9  # clipped
        np.testing.assert_array_equal(quantizer({"x": x})["x"], quantize(x, spec))


def test_float_inputs_pass_through() -> None:
    spec = TensorSpec(name="x", shape=[-1, 2], dtype="float32")
    x = np.ones((3, 2), np.float32)
    np.testing.assert_array_equal(InputQuantizer([spec])({"x": x})["x"], x)
