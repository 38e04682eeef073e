"""TFLite targets from a PyTorch source: litert-torch converts, ai-edge-quantizer quantizes.

litert-torch (``litert_torch.convert``) traces the module with ``torch.export`` and lowers it
with its own MLIR converter, without TensorFlow. The module is wrapped so that the TFLite
signature carries the source's tensor names (``input``, or each named input of a module fed
an ``.npz`` of named arrays, and the exported outputs' names), so the bundle's manifest,
validation and the agent all speak of the same tensors; the layout stays PyTorch's (NCHW in,
as the data is given). Integer inputs (token ids, masks) keep their dtype: int64 stays int64
(litert-torch's ``enable_x64``), and the quantizers leave them unquantized.

Every tflite target then starts from that one float32 ``.tflite`` and quantizes it with
ai-edge-quantizer (a dependency of litert-torch), on the TFLite graph itself:

- ``fp32``: the float file as litert-torch wrote it.
- ``fp16``: float16 weights (``FLOAT_CASTING``), dequantized to float32 at load.
- ``dynamic``: int8 per-channel weights, activations quantized at run time
  (``dynamic_wi8_afp32``).
- ``int8``: full integer (``static_wi8_ai8``): per-channel symmetric int8 weights, asymmetric
  int8 activations calibrated by their minimum and maximum over all the calibration data
  through the LiteRT interpreter, and int8 input and output tensors with their scale and zero point, which is
  what the tflite-int8 bundle contract promises and the agent's input quantizer reads.

Before ``dynamic`` and ``int8`` quantize the weights, and when there is calibration data, the
float file's biases are corrected for the mean error that rounding each layer's weights to
int8 adds to its output (:mod:`.bias_correction`); the report's ``calibration`` says so.
``int8``'s activation ranges are each tensor's extremes over the calibration data
(:mod:`.litert_ranges`), not the quantizer's moving average of per-sample ranges.

Why ai-edge-quantizer on the float file rather than litert-torch's PT2E quantization: the
quantized graph is the float graph with each op swapped for its int8 kernel, which XNNPACK
runs (QS8 convolutions, fully connected, adds); PT2E inserts quantize/dequantize pairs in the
torch graph and leaves the MLIR converter to fold them, and keeps float input and output. The
same float conversion also serves fp16 and dynamic. On EfficientNet-Lite0 both int8 paths
run at the same speed on XNNPACK, and this one, with the two additions below, agrees better
with float (docs/performance.md has the figures); PT2E leaves quantize/dequantize pairs and
float adds in the graph and traces the module a second time.

There is no ONNX → TFLite route in edgedl's dependencies (onnx2tf pins TensorFlow and NumPy
releases that clash with edgedl[convert]), so when litert-torch cannot convert a module the
conversion stops with one line naming what failed and the path tried, and points to the
onnx-* targets, which take every PyTorch module ``torch.onnx.export`` takes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.errors import ConversionError, UsageError

from . import torch_source
from .bias_correction import correct_biases
from .litert_ranges import minmax_ranges
from .targets import BuildContext, BuildResult

_first_line = torch_source._first_line

PATH = "litert-torch"
_TRIED = "PyTorch → torch.export → litert-torch → TFLite"


def _quiet(log: Path | None = None) -> contextlib.AbstractContextManager[None]:
    """:func:`.torch_source._quiet`, holding litert-torch's and the quantizer's loggers too:
    their errors are raised, and reported in one line. With ``log``, the native converter's
    own log lines (written to file descriptor 2) go to that file."""
    return torch_source._quiet(log, also=("absl", "torchao", "torch.utils._pytree"))


def _named(module: Any, input_names: list[str], output_names: list[str]) -> Any:
    """``module`` as a module whose inputs are keyword arguments called ``input_names`` (passed
    on in that order) and whose outputs are a dict keyed by ``output_names`` (litert-torch
    names the signature's tensors after both)."""
    import torch

    class Named(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, **inputs: Any) -> dict[str, Any]:
            args = [inputs[n] for n in input_names]
            outputs = list(torch_source._flatten(self.inner(*args)))
            if len(outputs) != len(output_names):
                raise ConversionError(
                    f"the module returns {len(outputs)} outputs, its ONNX export "
                    f"{len(output_names)}"
                )
            return dict(zip(output_names, outputs, strict=True))

    named = Named()
    # Not .eval(): it recurses, and a torch.export program's module refuses train()/eval()
    # (it is in eval mode already, as every loaded module is).
    named.training = False
    return named


def float_tflite(ctx: BuildContext) -> Path:
    """The source module as a float32 ``.tflite`` in ``ctx.workdir``, converted once per
    workdir by litert-torch; :class:`ConversionError` naming the failure otherwise."""
    out = ctx.workdir / "litert-torch-fp32.tflite"
    if out.is_file():
        return out
    model = ctx.source.torch_module
    if model is None:
        raise ConversionError("the PyTorch module was not loaded")
    try:
        with _quiet(ctx.workdir / "litert-torch.log"):  # torchao logs what it cannot load
            import litert_torch
            import torch
    except ImportError as exc:
        raise ConversionError(
            "PyTorch → TFLite needs litert-torch: pip install 'edgedl[torch]'"
        ) from exc
    samples = _samples(ctx)
    integer = any(v.dtype.kind in "iu" for v in samples.values())
    names = [s.name for s in ctx.source.outputs]
    try:
        with _quiet(ctx.workdir / "litert-torch.log"):
            edge = litert_torch.convert(
                _named(model.module, list(samples), names),
                sample_kwargs={k: torch.from_numpy(v) for k, v in samples.items()},
                enable_x64=integer,  # keeps int64 inputs int64 (they would become int32)
            )
            edge.export(str(out))
    except ConversionError:
        raise
    except Exception as exc:  # torch.export, lowering and MLIR errors of every kind
        raise ConversionError(
            f"litert-torch could not convert the {model.form} module ({_TRIED}): "
            f"{_first_line(exc)}; there is no ONNX → TFLite route in edgedl, use an "
            "onnx-* target"
        ) from exc
    return out


def _samples(ctx: BuildContext) -> dict[str, Any]:
    """One sample of each input, by name in the source's order, to trace the module with: the
    first calibration sample when there is calibration data, else zeros of the input's dtype."""
    specs = ctx.source.inputs
    if ctx.calibration is not None:
        feeds = ctx.calibration.feeds(specs[0].name, 0, 1)
        return {s.name: np.ascontiguousarray(feeds[s.name], s.dtype) for s in specs}
    return {s.name: np.zeros((1, *[max(d, 1) for d in s.sample_shape]), s.dtype) for s in specs}


def _calibration_data(ctx: BuildContext) -> list[dict[str, Any]]:
    """The calibration samples one at a time, by input name, in each input's dtype (integer
    inputs such as token ids stay integers, which the quantizer leaves unquantized)."""
    assert ctx.calibration is not None
    specs = ctx.source.inputs
    n = min(len(ctx.calibration), ctx.calibration_samples)
    feeds = [ctx.calibration.feeds(specs[0].name, i, i + 1) for i in range(n)]
    return [{s.name: np.asarray(f[s.name], s.dtype) for s in specs} for f in feeds]


def _recipe(mode: str) -> Any:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if mode == "dynamic":
        return recipe.dynamic_wi8_afp32()
    if mode == "int8":
        return recipe.static_wi8_ai8()
    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(
        ".*",
        qtyping.TFLOperationName.ALL_SUPPORTED,
        16,
        algorithm_key=AlgorithmName.FLOAT_CASTING,
    )
    return manager.get_quantization_recipe()


def build(ctx: BuildContext, mode: str) -> BuildResult:
    """Build the tflite target ``mode`` (fp32, fp16, dynamic, int8) from a PyTorch source."""
    model = ctx.source.torch_module
    if model is not None and model.form == "torchscript":
        raise UsageError(torch_source.TORCHSCRIPT_TFLITE)
    if mode == "int8" and ctx.io_dtype != "int8":
        raise UsageError(
            f"tflite-int8 from a PyTorch source has int8 input and output (ai-edge-quantizer "
            f"writes no other), so --io {ctx.io_dtype} (given, or the --device profile's "
            "default) is not available: give --io int8"
        )
    if mode not in ("fp32", "fp16", "dynamic", "int8"):
        raise UsageError(
            f"tflite {mode} is not available from a PyTorch source; use tflite-int8 "
            "(int8 I/O, which the agent quantizes and dequantizes for its callers)"
        )
    float_path = float_tflite(ctx)
    if mode == "fp32":
        return BuildResult(model_path=float_path, path=PATH)
    calibration: dict[str, Any] | None = None
    try:
        with _quiet(ctx.workdir / "litert-torch.log"):
            from ai_edge_quantizer import quantizer

            source = float_path.read_bytes()
            int8_weights = mode in ("int8", "dynamic")
            data = _calibration_data(ctx) if int8_weights and ctx.calibration is not None else []
            correction = None
            if data:  # int8 weights round with a bias the calibration data can measure
                source, correction = correct_biases(source, data)
            chosen = _recipe(mode)
            q = quantizer.Quantizer(source)
            q.load_quantization_recipe(chosen)
            ranges = None
            if mode == "int8":
                ranges = minmax_ranges(source, chosen, data)
                ctx.advance(len(data))
            if data:
                calibration = {
                    "method": "minmax over all samples (ai-edge-quantizer static_wi8_ai8)"
                    if mode == "int8"
                    else "none (dynamic_wi8_afp32: activations quantized at run time)",
                    "samples": len(data),
                    "per_channel": True,
                    "source": ctx.calibration.source if ctx.calibration else None,
                    "bias_correction": correction.as_dict() if correction else None,
                }
            quantized = q.quantize(ranges).quantized_model
    except Exception as exc:
        raise ConversionError(
            f"ai-edge-quantizer could not quantize the litert-torch model to {mode}: "
            f"{_first_line(exc)}"
        ) from exc
    out = ctx.workdir / f"model-{mode}.tflite"
    out.write_bytes(bytes(quantized))
    return BuildResult(model_path=out, calibration=calibration, path=f"{PATH} + ai-edge-quantizer")
