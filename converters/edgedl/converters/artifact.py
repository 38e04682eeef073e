"""Read a converted model file back: its tensor specs and the ops that stayed in float."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.bundle import Quantization, TensorSpec
from edgedl.runtime import first_backend

_TFLITE_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}
_ONNX_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_ONNX_NEUTRAL_OPS = {"Cast", "Constant", "Shape", "Identity"}
_ONNX_DTYPES = {1: "float32", 10: "float16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64"}


@dataclass
class ArtifactInfo:
    """Tensor specs as the runtime sees them, and which ops compute in float."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    ops_total: int
    float_ops: list[dict[str, Any]]  # [{"op": type, "count": n}], most frequent first


def _counted(ops: list[str]) -> list[dict[str, Any]]:
    return [{"op": op, "count": n} for op, n in Counter(ops).most_common()]


def describe_tflite(path: Path) -> ArtifactInfo:
    """Specs (by signature name) and float ops of a ``.tflite`` file."""
    module = first_backend("litert")
    # Without the default XNNPACK delegate, so the ops listed are the model's own.
    resolver = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType
    interp = module.Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interp.allocate_tensors()
    sig = interp.get_signature_runner()

    def specs(details: dict[str, dict[str, Any]]) -> list[TensorSpec]:
        out = []
        for name, d in details.items():
            scale, zero_point = d["quantization"]
            dtype = np.dtype(d["dtype"]).name
            quant = (
                Quantization(scale=float(scale), zero_point=int(zero_point))
                if np.dtype(d["dtype"]).kind in "iu" and scale
                else None
            )
            shape = [int(x) for x in d.get("shape_signature", d["shape"])]
            out.append(TensorSpec(name=name, shape=shape, dtype=dtype, quantization=quant))
        return out

    ops = interp._get_ops_details()
    float_ops = [
        op["op_name"]
        for op in ops
        if op["op_name"] not in _TFLITE_BOUNDARY_OPS
        and any(np.dtype(t).kind == "f" for t in op.get("result_types", []))
    ]
    return ArtifactInfo(
        inputs=specs(sig.get_input_details()),
        outputs=specs(sig.get_output_details()),
        ops_total=len(ops),
        float_ops=_counted(float_ops),
    )


def describe_onnx(path: Path) -> ArtifactInfo:
    """Specs and float ops of an ``.onnx`` file.

    In a QDQ model an op is quantized when it reads a DequantizeLinear output; elsewhere an
    op is float when its output is a float32 tensor (after shape inference).
    """
    import onnx

    model = onnx.load(str(path))
    initializers = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorSpec(name=v.name, shape=shape, dtype=_ONNX_DTYPES.get(t.elem_type, "float32"))

    nodes = list(model.graph.node)
    producers = {out: n.op_type for n in nodes for out in n.output}
    is_qdq = any(n.op_type == "DequantizeLinear" for n in nodes) and not any(
        n.op_type == "DynamicQuantizeLinear" for n in nodes
    )
    if is_qdq:
        float_ops = [
            n.op_type
            for n in nodes
            if n.op_type not in _ONNX_QUANT_OPS | _ONNX_NEUTRAL_OPS
            and not any(producers.get(i) == "DequantizeLinear" for i in n.input)
        ]
    else:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:
            inferred = model
        elem = {
            v.name: v.type.tensor_type.elem_type
            for v in [*inferred.graph.value_info, *inferred.graph.output]
        }
        float_ops = [
            n.op_type
            for n in nodes
            if n.op_type not in _ONNX_QUANT_OPS | _ONNX_NEUTRAL_OPS
            and any(elem.get(o) == onnx.TensorProto.FLOAT for o in n.output)
        ]
    return ArtifactInfo(
        inputs=[spec(v) for v in model.graph.input if v.name not in initializers],
        outputs=[spec(v) for v in model.graph.output],
        ops_total=len(nodes),
        float_ops=_counted(float_ops),
    )


def describe(path: Path, family: str) -> ArtifactInfo:
    """Describe a model file of the given family (``tflite`` or ``onnx``)."""
    return describe_tflite(path) if family == "tflite" else describe_onnx(path)
