"""ONNX targets: export with tf2onnx (or take the source's ONNX), quantize with ONNX Runtime, fp16 with onnxconverter-common."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.errors import ConversionError

from ._tf import import_tensorflow
from .sensitivity import layer_errors
from .targets import BuildContext, BuildResult, register

OPSET = 17
_FP16_MAX = float(np.finfo(np.float16).max)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def export_fp32(ctx: BuildContext) -> Path:
    """The source as a float32 ONNX file (exported once per conversion, then reused)."""
    out = ctx.workdir / "model.fp32.onnx"
    if out.exists():
        return out
    if ctx.source.onnx_path is not None:  # an ONNX source, or a PyTorch one exported to ONNX
        shutil.copyfile(ctx.source.onnx_path, out)
        return out
    assert ctx.source.saved_model_dir is not None
    tf = import_tensorflow()
    import tf2onnx

    loaded = tf.saved_model.load(str(ctx.source.saved_model_dir))
    sig = loaded.signatures["serving_default"]
    in_sig: dict[str, Any] = sig.structured_input_signature[1]
    names = list(in_sig)
    specs = [tf.TensorSpec(in_sig[n].shape, in_sig[n].dtype, name=n) for n in names]

    @tf.function(input_signature=specs)  # type: ignore[untyped-decorator]
    def serve(*args: Any) -> Any:
        return sig(**dict(zip(names, args, strict=True)))

    try:
        model, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=OPSET)
    except Exception as exc:
        raise ConversionError(f"tf2onnx could not export the model: {_first_line(exc)}") from exc
    import onnx

    onnx.save(compact_names(model), str(out))
    return out


def compact_names(model: Any) -> Any:
    """Rename internal tensors and nodes to short names, in place; graph I/O keeps its names.

    tf2onnx names tensors after TF's variable paths ("StatefulPartitionedCall/…/ReadVariableOp:0"),
    and a QDQ model repeats each name in several scale and zero-point tensors: in a small model
    the names alone outweigh the int8 weights.
    """
    graph = model.graph
    keep = {v.name for v in [*graph.input, *graph.output]}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping)}"
        return mapping[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for vi in graph.value_info:
        vi.name = short(vi.name)
    for i, node in enumerate(graph.node):
        node.name = f"{node.op_type}_{i}"
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    graph.doc_string = ""
    return model


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a Dataset (every input), batching when the
    model allows."""

    def __init__(self, ctx: BuildContext, input_name: str, batch: int) -> None:
        assert ctx.calibration is not None
        self._feeds = ctx.calibration.feeds(input_name, 0, ctx.calibration_samples)
        self._n = len(next(iter(self._feeds.values())))
        self._batch = batch
        self._pos = 0
        self._ctx = ctx

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        if self._pos >= self._n:
            return None
        stop = min(self._pos + self._batch, self._n)
        chunk = {k: v[self._pos : stop] for k, v in self._feeds.items()}
        self._ctx.advance(stop - self._pos)
        self._pos = stop
        return chunk

    def rewind(self) -> None:
        self._pos = 0


def _has_dynamic_batch(model_path: Path) -> bool:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and not dims[0].HasField("dim_value")


def _preprocess(src: Path, dst: Path, notes: list[str]) -> Path:
    """ONNX Runtime's shape inference and graph optimisation, once per exported model."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if dst.exists():
        return dst
    try:
        # ONNX Runtime's symbolic shape inference saves the model it could not finish, with
        # its weights as external data, into the working directory (sym_shape_infer_temp.onnx
        # and a <uuid>.data the size of the model); a scratch directory keeps the user's clean.
        with tempfile.TemporaryDirectory(prefix="edgedl-preprocess-") as scratch:
            here = os.getcwd()
            os.chdir(scratch)
            try:
                quant_pre_process(str(src.resolve()), str(dst.resolve()))
            finally:
                os.chdir(here)
        return dst
    except Exception as exc:
        notes.append(f"quant_pre_process failed ({_first_line(exc)}); quantized without it")
        return src


@register("onnx-fp32", "onnx", "ONNX, float32 (no quantization; the baseline)")
def onnx_fp32(ctx: BuildContext) -> BuildResult:
    """The exported (or given) float32 ONNX model."""
    return BuildResult(model_path=export_fp32(ctx))


def x86_without_vnni() -> bool:
    """Whether this machine is an x86-64 CPU with AVX2 but no VNNI (from ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & set(flags)


_SATURATION_NOTE = (
    "this CPU is x86-64 without VNNI: ONNX Runtime runs S8S8 as U8S8 through VPMADDUBSW, whose "
    "int16 sums saturate, so the accuracy measured here can be far below what the same model "
    "gives on a VNNI or ARM CPU; onnx-int8-u8u8 does not saturate (slower on such CPUs)"
)


@register(
    "onnx-int8",
    "onnx",
    "ONNX, static QDQ int8 (S8S8), per-channel weights",
    needs_calibration=True,
)
def onnx_int8(ctx: BuildContext) -> BuildResult:
    """Static QDQ quantization: int8 activations and per-channel int8 weights, float I/O.

    ONNX Runtime's fast format on ARM and on x86 CPUs with VNNI. On an x86 CPU without VNNI
    its int8 kernels saturate (see :data:`_SATURATION_NOTE`); the result then says so.
    """
    result = _static_qdq(ctx, "int8")
    if x86_without_vnni():
        result.warnings.append(_SATURATION_NOTE)
    return result


@register(
    "onnx-int8-u8u8",
    "onnx",
    "ONNX, static QDQ 8-bit with uint8 activations and uint8 per-channel weights (U8U8)",
    needs_calibration=True,
)
def onnx_int8_u8u8(ctx: BuildContext) -> BuildResult:
    """Static QDQ quantization: uint8 activations and per-channel uint8 weights, float I/O.

    For x86 CPUs without VNNI, where ONNX Runtime's S8S8/U8S8 kernels use the saturating
    VPMADDUBSW: U8U8 kernels compute what the quantized graph says on every CPU, at a cost
    in speed there (EfficientNet-Lite0: 84% top-1 agreement with float against 61% for
    ``onnx-int8``, but about 5x its latency; docs/converting.md has the figures).
    """
    return _static_qdq(ctx, "uint8")


def _static_qdq(ctx: BuildContext, kind: str) -> BuildResult:
    """Static QDQ quantization with ``kind`` ("int8" or "uint8") activations and weights."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    assert ctx.calibration is not None
    qtype = QuantType.QInt8 if kind == "int8" else QuantType.QUInt8
    fp32 = export_fp32(ctx)
    notes: list[str] = []
    pre = _preprocess(fp32, ctx.workdir / "model.pre.onnx", notes)
    out = ctx.workdir / f"model.{kind}.onnx"
    reader = _Reader(ctx, ctx.source.inputs[0].name, 32 if _has_dynamic_batch(pre) else 1)
    op_types = _token_model_ops(ctx, notes)
    try:
        quantize_static(
            str(pre),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=qtype,
            weight_type=qtype,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(ctx.float_nodes),
            calibration_cache_path=ctx.calibration_cache,
            op_types_to_quantize=op_types,
        )
    except Exception as exc:
        raise ConversionError(f"ONNX static quantization failed: {_first_line(exc)}") from exc
    unknown = set(ctx.float_nodes) - {n.name for n in onnx.load(str(pre)).graph.node}
    if unknown:
        raise ConversionError(f"no node named {sorted(unknown)[0]!r} to keep in float")
    calibration = {
        "method": "minmax (onnxruntime)",
        "format": "QDQ",
        "activation_type": kind,
        "weight_type": kind,
        "samples": min(len(ctx.calibration), ctx.calibration_samples),
        "per_channel": True,
        "source": ctx.calibration.source,
        "float_nodes": list(ctx.float_nodes),
        "op_types": op_types or "all",
        # Per quantized layer, the worst first: what to keep in float if accuracy suffers.
        "layer_errors": layer_errors(
            pre, out, ctx.calibration.feeds(ctx.source.inputs[0].name), ctx.source.inputs[0].name
        )
        if ctx.measure_layers
        else None,
    }
    return BuildResult(model_path=out, calibration=calibration, warnings=notes)


def _has_integer_inputs(ctx: BuildContext) -> bool:
    """Whether the model takes integer inputs (token ids, masks): a transformer, most likely."""
    return any(np.dtype(s.dtype).kind in "iu" for s in ctx.source.inputs)


def _token_model_ops(ctx: BuildContext, notes: list[str]) -> list[str] | None:
    """MatMul/Gemm only for a model with integer inputs (a transformer on token ids); else all.

    Such a model adds its attention mask as float32's lowest value: quantizing that sum, or
    LayerNormalization and Softmax, on one int8 scale wipes out the attention scores
    (all-MiniLM-L6-v2: embedding cosine to float 0.36 with every op quantized, 0.93 with
    its MatMuls only).
    """
    if not _has_integer_inputs(ctx):
        return None
    integer = [s.name for s in ctx.source.inputs if np.dtype(s.dtype).kind in "iu"]
    notes.append(
        f"integer inputs ({', '.join(integer)}) pass unquantized; only MatMul/Gemm are "
        "quantized (attention masks, LayerNormalization and Softmax stay float32)"
    )
    return ["MatMul", "Gemm"]


@register("onnx-dynamic", "onnx", "ONNX, dynamic int8 (MatMul/Gemm weights only)")
def onnx_dynamic(ctx: BuildContext) -> BuildResult:
    """Dynamic quantization: int8 MatMul/Gemm weights (per channel for a model with integer
    inputs), activations quantized at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_fp32(ctx)
    notes: list[str] = []
    pre = _preprocess(fp32, ctx.workdir / "model.pre.onnx", notes)
    out = ctx.workdir / "model.dynamic.onnx"
    try:
        # ConvInteger has no int8-weight CPU kernel, so Conv stays float: dynamic
        # quantization is for MatMul-heavy models (MLPs, transformers, RNNs).
        # Per-channel weight scales for a model on token ids: one outlier column (common in
        # transformers' MatMuls) would otherwise crush every other column's resolution
        # (all-MiniLM-L6-v2: embedding cosine to float 0.96 per tensor, 0.99 per channel).
        quantize_dynamic(
            str(pre),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=_has_integer_inputs(ctx),
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    except Exception as exc:
        raise ConversionError(f"ONNX dynamic quantization failed: {_first_line(exc)}") from exc
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node}
    if "Conv" in ops:
        notes.append(
            "onnx-dynamic quantizes only MatMul/Gemm weights; this model's Conv layers stay "
            "float32, so a CNN barely shrinks or speeds up: prefer onnx-int8"
        )
    return BuildResult(model_path=out, warnings=notes)


@register("onnx-fp16", "onnx", "ONNX, float16 weights and compute, float32 I/O (GPUs, Jetson)")
def onnx_fp16(ctx: BuildContext) -> BuildResult:
    """Float16 everywhere inside, float32 at the inputs and outputs (``keep_io_types``)."""
    import onnx
    from onnx import numpy_helper
    from onnxconverter_common import float16

    fp32 = export_fp32(ctx)
    model = onnx.load(str(fp32))
    notes: list[str] = []
    overflow = sum(
        int(np.sum(np.abs(numpy_helper.to_array(t)) > _FP16_MAX))
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    )
    if overflow:
        notes.append(f"{overflow} weight values exceed the float16 range and were clipped")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise ConversionError(f"float16 conversion failed: {_first_line(exc)}") from exc
    truncated = sum("truncated" in str(w.message) for w in caught)
    if truncated:
        notes.append(
            f"{truncated} weight values were too small for float16 and were rounded to its "
            "smallest normal value"
        )
    _align_casts(converted)
    out = ctx.workdir / "model.fp16.onnx"
    onnx.save(converted, str(out))
    return BuildResult(model_path=out, warnings=notes)


def _align_casts(model: Any) -> None:
    """Casts to float32 whose output the float16 converter typed float16 now cast to float16.

    onnxconverter-common retypes every float tensor inside the graph but leaves a Cast's
    ``to`` (an integer attention mask cast to float, say) at float32, which ONNX Runtime
    refuses to load.
    """
    import onnx

    typed = {
        v.name: v.type.tensor_type.elem_type for v in model.graph.value_info if v.type.tensor_type
    }
    for node in model.graph.node:
        if node.op_type != "Cast" or typed.get(node.output[0]) != onnx.TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                attr.i = onnx.TensorProto.FLOAT16
