"""Per-layer quantization error of an ONNX QDQ model: which layers to keep in float first.

The output of every Conv, Gemm and MatMul is read from the float model and from the QDQ
model on the same calibration samples (both models get those tensors as extra outputs, as
ONNX Runtime's ``qdq_loss_debug`` does), and compared as SQNR in dB. The error accumulates
along the network, so a layer's own share is how much SQNR it loses against the worst of
the layers that feed it (a first layer's, against an ideal 8-bit quantizer's 49.9 dB);
layers are ranked by that loss, the worst first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# A first layer's loss is counted from what an ideal 8-bit quantizer keeps of a full-scale
# signal (6.02 * 8 + 1.76 dB).
IDEAL_INT8_SQNR_DB = 49.9
_SAMPLES = 64
_RENAMED = "_QuantizeLinear_Input"
_DEQUANTIZED = "_DequantizeLinear_Output"


def _with_outputs(model: Any, names: list[str]) -> bytes:
    from onnx import TensorProto, helper

    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return bytes(model.SerializeToString())


def run_onnx(model: bytes, names: list[str], feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
    """The ``names`` outputs of an ONNX model (as float64) on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    if not isinstance(batch, int) or batch < 1:
        return [np.asarray(a, np.float64) for a in session.run(names, feeds)]
    # A model exported at a fixed batch size takes only that many samples at a time.
    n = next(iter(feeds.values())).shape[0] // batch * batch
    parts = [
        session.run(names, {k: v[i : i + batch] for k, v in feeds.items()})
        for i in range(0, n, batch)
    ]
    return [
        np.concatenate([np.asarray(p[j], np.float64) for p in parts]) for j in range(len(names))
    ]


def _sqnr(ref: NDArray[Any], art: NDArray[Any]) -> float:
    noise = float(np.sum(np.square(ref - art)))
    signal = float(np.sum(np.square(ref)))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def layer_errors(
    float_model: Path,
    qdq_model: Path,
    x: NDArray[np.float32] | Mapping[str, NDArray[Any]],
    input_name: str,
) -> list[dict[str, Any]]:
    """Per quantizable layer: ``node``, ``op``, ``sqnr_db`` and ``loss_db``, worst loss first.

    ``x`` is the single input's samples, or every input's by name (in their own dtypes).
    """
    import onnx

    fmodel = onnx.load(str(float_model))
    qmodel = onnx.load(str(qdq_model))
    float_tensors = {o for n in fmodel.graph.node for o in n.output}
    q_tensors = {o for n in qmodel.graph.node for o in n.output}
    # Each quantized layer's output, by node name, as the next layer sees it: after its
    # QuantizeLinear/DequantizeLinear pair. The quantizer may have fused an activation into
    # the layer (Conv+Relu writes the Relu's tensor, and the Q/DQ clipping does the Relu) or
    # renamed a graph output it quantizes.
    pairs: dict[str, tuple[str, str]] = {}  # node name -> (float tensor, QDQ model tensor)
    for node in qmodel.graph.node:
        if node.op_type not in QUANTIZABLE_OPS or not node.name:
            continue
        tensor = node.output[0].removesuffix(_RENAMED)
        seen = next((t for t in (tensor + _DEQUANTIZED, tensor) if t in q_tensors), None)
        if tensor in float_tensors and seen is not None:
            pairs[node.name] = (tensor, seen)
    layers = [n for n in fmodel.graph.node if n.name in pairs]
    if not layers:
        return []
    f_names = list(dict.fromkeys(pairs[n.name][0] for n in layers))
    q_names = [next(q for f, q in pairs.values() if f == name) for name in f_names]
    if isinstance(x, Mapping):
        feeds = {k: np.asarray(v[:_SAMPLES]) for k, v in x.items()}
    else:
        feeds = {input_name: np.asarray(x[:_SAMPLES], np.float32)}
    ref = run_onnx(_with_outputs(fmodel, f_names), f_names, feeds)
    art = run_onnx(_with_outputs(qmodel, q_names), q_names, feeds)
    sqnr = {f: _sqnr(r, a) for f, r, a in zip(f_names, ref, art, strict=True)}
    producer = {o: n for n in fmodel.graph.node for o in n.output}
    rows = []
    for node in layers:
        out = pairs[node.name][0]
        upstream = [sqnr[t] for t in _upstream_layers(node, producer, set(sqnr))]
        before = min(upstream) if upstream else IDEAL_INT8_SQNR_DB
        loss = max(0.0, before - sqnr[out])
        rows.append(
            {
                "node": node.name,
                "op": node.op_type,
                "sqnr_db": None if math.isinf(sqnr[out]) else round(sqnr[out], 2),
                "loss_db": round(loss, 2) if math.isfinite(loss) else 0.0,
            }
        )
    rows.sort(key=lambda r: -r["loss_db"])
    return rows


def _upstream_layers(node: Any, producer: dict[str, Any], measured: set[str]) -> list[str]:
    """The nearest quantizable layers' outputs that feed ``node`` (through any other ops)."""
    found: list[str] = []
    stack = list(node.input)
    seen: set[str] = set()
    while stack:
        tensor = stack.pop()
        if tensor in seen or tensor not in producer:
            continue
        seen.add(tensor)
        if tensor in measured:
            found.append(tensor)
            continue
        stack.extend(producer[tensor].input)
    return found
