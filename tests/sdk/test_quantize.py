"""Float <-> integer tensor conversion and the runner's input checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from edgedl.bundle import Manifest, Quantization, TensorSpec
from edgedl.errors import DataError
from edgedl.runtime import Runner, dequantize, quantize


def _spec(dtype: str, scale: float | None = None, zero_point: int = 0) -> TensorSpec:
    quant = None if scale is None else Quantization(scale=scale, zero_point=zero_point)
    return TensorSpec(name="t", shape=[-1, 4], dtype=dtype, quantization=quant)


# --- quantize / dequantize --------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "scale", "zero_point"),
    [
        ("int8", 0.05, -3),
        ("int8", 1 / 255, -128),
        ("uint8", 1 / 255, 0),
        ("uint8", 0.1, 128),
        ("int16", 0.001, 0),
    ],
)
def test_round_trip_error_at_most_half_a_step(dtype, scale, zero_point):
    spec = _spec(dtype, scale, zero_point)
    info = np.iinfo(dtype)
    lo, hi = scale * (info.min - zero_point), scale * (info.max - zero_point)
    x = np.linspace(lo, hi, 10_007).astype(np.float32)
    q = quantize(x, spec)
    assert q.dtype == np.dtype(dtype)
    back = dequantize(q, spec)
    assert back.dtype == np.float32
    err = np.abs(back.astype(np.float64) - x.astype(np.float64))
    assert err.max() <= scale / 2 + 1e-6 * max(1.0, abs(lo), abs(hi))
    # every level of the representable range is used
    assert q.min() == info.min
    assert q.max() == info.max


def test_quantize_exact_levels():
    spec = _spec("int8", 0.5, 10)
    x = np.array([0.0, 0.5, -0.5, 2.0, 0.26, -0.24], dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, spec), [10, 11, 9, 14, 11, 10])
    np.testing.assert_array_equal(
        dequantize(np.array([10, 11, 9, -128, 127], dtype=np.int8), spec),
        [0.0, 0.5, -0.5, -69.0, 58.5],
    )


@pytest.mark.parametrize(
    ("dtype", "zero_point"), [("int8", 0), ("int8", -128), ("uint8", 0), ("uint8", 128)]
)
def test_quantize_clips_at_dtype_limits(dtype, zero_point):
    spec = _spec(dtype, 0.1, zero_point)
    info = np.iinfo(dtype)
    x = np.array([1e6, -1e6, 1e3, -1e3], dtype=np.float32)
    q = quantize(x, spec)
    assert q.dtype == np.dtype(dtype)
    assert q.tolist() == [info.max, info.min, info.max, info.min]
    back = dequantize(q, spec)
    np.testing.assert_allclose(
        back, [0.1 * (info.max - zero_point), 0.1 * (info.min - zero_point)] * 2, rtol=1e-6
    )


def test_quantize_keeps_shape():
    spec = _spec("int8", 0.1, 0)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    assert quantize(x, spec).shape == (3, 8, 8, 1)
    assert dequantize(quantize(x, spec), spec).shape == (3, 8, 8, 1)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_specs_pass_through(dtype):
    spec = _spec(dtype)
    x = np.random.default_rng(1).normal(0.0, 100.0, (5, 4)).astype(np.float32)
    q = quantize(x, spec)
    assert q.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(q, x.astype(dtype))
    back = dequantize(q, spec)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, x.astype(dtype).astype(np.float32))


def test_float32_pass_through_is_exact():
    spec = _spec("float32")
    x = np.array([1e-30, -3.5, 1e30, 0.1], dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, spec), x)
    np.testing.assert_array_equal(dequantize(x, spec), x)


def test_float_spec_ignores_quantization_on_the_way_in():
    spec = _spec("float32", 0.5, 3)
    x = np.array([1.25, -7.0], dtype=np.float32)
    np.testing.assert_array_equal(quantize(x, spec), x)


def test_integer_spec_without_quantization_is_a_cast():
    spec = _spec("int32")
    q = quantize(np.array([1.0, 2.0, -3.0]), spec)
    assert q.dtype == np.int32
    assert q.tolist() == [1, 2, -3]
    assert dequantize(q, spec).tolist() == [1.0, 2.0, -3.0]


# --- Runner.check_inputs ----------------------------------------------------------------


class _ZeroRunner(Runner):
    """A runner whose model returns zeros: enough to test what the base class does."""

    backend = "zeros"

    def _invoke(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        n = next(iter(inputs.values())).shape[0]
        return {
            s.name: np.zeros((n, *[d if d != -1 else 1 for d in s.sample_shape]), s.dtype)
            for s in self.outputs
        }


@pytest.fixture
def runner() -> _ZeroRunner:
    manifest = Manifest(
        name="m",
        version="1",
        target="test",
        runtime="onnxruntime",
        model_file="m.onnx",
        sha256="0" * 64,
        size_bytes=0,
        inputs=[
            TensorSpec(
                name="image",
                shape=[-1, 8, 8, 1],
                dtype="int8",
                quantization=Quantization(scale=1 / 255, zero_point=-128),
            ),
            TensorSpec(name="meta", shape=[-1, -1], dtype="float32"),
        ],
        outputs=[
            TensorSpec(
                name="probs",
                shape=[-1, 10],
                dtype="int8",
                quantization=Quantization(scale=1 / 256, zero_point=-128),
            )
        ],
    )
    return _ZeroRunner(manifest)


def _ok_inputs(n: int = 4) -> dict[str, np.ndarray]:
    return {"image": np.zeros((n, 8, 8, 1), np.float32), "meta": np.zeros((n, 3), np.float32)}


def test_check_inputs_accepts_valid_batch(runner):
    checked = runner.check_inputs(_ok_inputs())
    assert set(checked) == {"image", "meta"}
    assert checked["image"].shape == (4, 8, 8, 1)
    # -1 accepts any size
    checked = runner.check_inputs({"image": np.zeros((2, 8, 8, 1)), "meta": np.zeros((2, 17))})
    assert checked["meta"].shape == (2, 17)
    # integers and booleans are numbers too
    runner.check_inputs({"image": np.zeros((1, 8, 8, 1), np.uint8), "meta": np.ones((1, 1), bool)})


@pytest.mark.parametrize(
    ("shape", "got"),
    [((4, 8, 8), "[4, 8, 8]"), ((4, 8, 9, 1), "[4, 8, 9, 1]"), ((8, 8, 1), "[8, 8, 1]")],
)
def test_check_inputs_wrong_sample_shape(runner, shape, got):
    inputs = {**_ok_inputs(), "image": np.zeros(shape, np.float32)}
    with pytest.raises(DataError) as info:
        runner.check_inputs(inputs)
    message = str(info.value)
    assert "'image'" in message
    assert "[?, 8, 8, 1]" in message
    assert got in message


def test_check_inputs_wrong_rank_for_dynamic_input(runner):
    inputs = {**_ok_inputs(), "meta": np.zeros((4, 3, 1), np.float32)}
    with pytest.raises(DataError, match=r"input 'meta': expected shape \[\?, \?\]"):
        runner.check_inputs(inputs)


def test_check_inputs_unknown_name(runner):
    with pytest.raises(DataError, match="unknown input 'imgae'") as info:
        runner.check_inputs({**_ok_inputs(), "imgae": np.zeros((4, 8, 8, 1))})
    assert "image" in str(info.value).split("inputs:", 1)[1]


def test_check_inputs_missing_input(runner):
    with pytest.raises(DataError, match="missing input 'meta'"):
        runner.check_inputs({"image": np.zeros((4, 8, 8, 1), np.float32)})


@pytest.mark.parametrize(
    "bad",
    [
        np.full((4, 8, 8, 1), "a"),
        np.empty((4, 8, 8, 1), dtype=object),
        np.zeros((4, 8, 8, 1), np.complex64),
    ],
)
def test_check_inputs_non_numeric(runner, bad):
    with pytest.raises(DataError, match="input 'image': expected numbers") as info:
        runner.check_inputs({**_ok_inputs(), "image": bad})
    assert str(bad.dtype) in str(info.value)


def test_check_inputs_batch_mismatch(runner):
    inputs = {**_ok_inputs(4), "meta": np.zeros((3, 3), np.float32)}
    with pytest.raises(DataError, match="same batch size"):
        runner.check_inputs(inputs)


def test_run_checks_quantizes_and_dequantizes(runner):
    out = runner.run(_ok_inputs(2))
    assert set(out) == {"probs"}
    assert out["probs"].dtype == np.float32
    assert out["probs"].shape == (2, 10)
    # a raw 0 with zero point -128 and scale 1/256 is 0.5
    np.testing.assert_array_equal(out["probs"], np.full((2, 10), 0.5, np.float32))
    with pytest.raises(DataError, match="missing input 'image'"):
        runner.run({"meta": np.zeros((2, 3))})
    with pytest.raises(DataError, match="one input and one output"):
        runner.predict(np.zeros((2, 8, 8, 1)))
