"""TFLite targets, built with TensorFlow's TFLiteConverter from the source's SavedModel.

A PyTorch source takes its own route, without TensorFlow (:mod:`.torch_tflite`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from edgedl.errors import ConversionError

from ._tf import import_tensorflow
from .targets import BuildContext, BuildResult, register

# TFLite converter messages that name the op it could not handle.
_OP_PATTERNS = (
    re.compile(r"Quantization not yet supported for op: '?([\w.]+)'?"),
    re.compile(r"'(tf\.[\w.]+)' op is neither a custom op nor a flex op"),
    re.compile(r"op[s]? (?:that )?(?:are|is) not supported[^:]*:\s*([\w., ]+)"),
    re.compile(r"failed to legalize operation '([\w.]+)'"),
)


def _unsupported_ops(message: str) -> list[str]:
    found: list[str] = []
    for pattern in _OP_PATTERNS:
        for m in pattern.finditer(message):
            op = m.group(1).strip().rstrip(".,")
            if op and op not in found:
                found.append(op)
    return found


def _representative(ctx: BuildContext) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
    assert ctx.calibration is not None
    name = ctx.source.inputs[0].name
    for i in range(min(len(ctx.calibration), ctx.calibration_samples)):
        yield {name: ctx.calibration.x[i : i + 1]}
        ctx.advance(1)


def _convert(ctx: BuildContext, mode: str) -> BuildResult:
    if ctx.source.kind == "torch":
        from . import torch_tflite

        return torch_tflite.build(ctx, mode)
    tf = import_tensorflow()

    if ctx.source.saved_model_dir is None:
        raise ConversionError(
            f"{ctx.source.path.name}: TFLite targets need a Keras or SavedModel source "
            "(ONNX to TFLite is not supported; use an onnx-* target or onnx2tf)"
        )
    if len(ctx.source.inputs) != 1 and ctx.calibration is not None:
        raise ConversionError("calibrating a model with several inputs is not supported yet")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(ctx.source.saved_model_dir), signature_keys=["serving_default"]
    )
    calibration: dict[str, Any] | None = None
    if mode != "fp32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    if mode in ("int8", "int8-float-io"):
        assert ctx.calibration is not None
        converter.representative_dataset = lambda: _representative(ctx)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        calibration = {
            "method": "minmax (TFLite converter)",
            "samples": min(len(ctx.calibration), ctx.calibration_samples),
            "per_channel": True,
            "source": ctx.calibration.source,
        }
    if mode == "int8":
        io = tf.uint8 if ctx.io_dtype == "uint8" else tf.int8
        converter.inference_input_type = io
        converter.inference_output_type = io
    try:
        with warnings.catch_warnings():
            # The converter's calibrator uses tf.lite.Interpreter internally and warns about it.
            warnings.simplefilter("ignore", UserWarning)
            flatbuffer = converter.convert()
    except Exception as exc:  # ConverterError and friends
        message = str(exc)
        ops = _unsupported_ops(message)
        if ops:
            raise ConversionError(
                f"cannot convert to full-integer TFLite: op(s) {', '.join(ops)} cannot be "
                "quantized; try tflite-dynamic or tflite-fp16, or replace the op"
                if mode.startswith("int8")
                else f"TFLite cannot convert op(s): {', '.join(ops)}"
            ) from exc
        first = next((ln for ln in message.splitlines() if "error" in ln.lower()), message[:300])
        raise ConversionError(f"TFLite conversion failed: {first.strip()[:300]}") from exc
    out = ctx.workdir / "model.tflite"
    out.write_bytes(flatbuffer)
    return BuildResult(model_path=out, calibration=calibration)


@register("tflite-fp32", "tflite", "TFLite, float32 (no quantization; the baseline)")
def tflite_fp32(ctx: BuildContext) -> BuildResult:
    """Plain float32 TFLite."""
    return _convert(ctx, "fp32")


@register("tflite-fp16", "tflite", "TFLite, float16 weights, float32 compute and I/O")
def tflite_fp16(ctx: BuildContext) -> BuildResult:
    """Float16 weights (about half the size), dequantized to float32 at load."""
    return _convert(ctx, "fp16")


@register("tflite-dynamic", "tflite", "TFLite, int8 weights, float activations (no calibration)")
def tflite_dynamic(ctx: BuildContext) -> BuildResult:
    """Dynamic-range quantization: int8 weights, activations quantized on the fly."""
    return _convert(ctx, "dynamic")


@register(
    "tflite-int8",
    "tflite",
    "TFLite, full integer, int8 input/output (--io uint8 for Edge TPU)",
    needs_calibration=True,
)
def tflite_int8(ctx: BuildContext) -> BuildResult:
    """Full-integer quantization with integer I/O (what MCUs and the Edge TPU run)."""
    return _convert(ctx, "int8")


@register(
    "tflite-int8-float-io",
    "tflite",
    "TFLite, full integer ops, float32 input/output",
    needs_calibration=True,
)
def tflite_int8_float_io(ctx: BuildContext) -> BuildResult:
    """Full-integer ops with quantize/dequantize at the edges, so callers pass floats."""
    return _convert(ctx, "int8-float-io")
