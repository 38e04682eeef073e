"""Sizes of a model: parameters and multiply-adds of a Keras model, weights in an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def keras_parameters(model: Any) -> int:
    """All weights of a Keras model (trainable or not), as Keras counts them."""
    return int(model.count_params())


def keras_macs(model: Any) -> int:
    """Multiply-adds of one sample through the Conv2D, DepthwiseConv2D and Dense layers."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense") or not layer.get_weights():
            continue
        kernel = layer.get_weights()[0]
        out_positions = int(np.prod([d or 1 for d in layer.output.shape[1:-1]]))
        if kind == "Dense":
            total += out_positions * kernel.shape[0] * kernel.shape[1]
        else:  # conv kernels: (kh, kw, in/groups, out) or depthwise (kh, kw, in, multiplier)
            total += out_positions * int(np.prod(kernel.shape))
    return total


def artifact_parameters(path: str | Path) -> int:
    """The number of constant values (weights, biases) stored in a .tflite or .onnx file."""
    p = Path(path)
    if p.suffix == ".onnx":
        import onnx

        model = onnx.load(str(p))
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    from tensorflow.lite.python import schema_py_generated as schema

    buf = p.read_bytes()
    tfl = schema.Model.GetRootAsModel(buf, 0)
    total = 0
    for g in range(tfl.SubgraphsLength()):
        sub = tfl.Subgraphs(g)
        for t in range(sub.TensorsLength()):
            tensor = sub.Tensors(t)
            buffer = tfl.Buffers(tensor.Buffer())
            stored = buffer is not None and (buffer.DataLength() > 0 or buffer.Size() > 0)
            if stored:
                total += int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else 1
    return total
