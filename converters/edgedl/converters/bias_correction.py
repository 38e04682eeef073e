"""Bias correction of a float ``.tflite`` before its weights are quantized to int8.

Rounding a layer's weights to int8 changes the layer's output by ``(W_q - W) x``. Over the
data that difference has a mean per output channel, ``(W_q - W) E[x]``, which does not average
out: it shifts every activation of that channel by the same amount, and the next layers carry
the shift on. Depthwise convolutions (9 or 25 weights per channel) and the ReLU6 inputs of
mobile networks, whose mean is far from zero, make the shift large. Bias correction (Nagel et
al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019)
subtracts it: each quantizable layer's float bias becomes ``b - (W_q - W) E[x]``, with
``E[x]`` the mean of the layer's input per channel over the calibration data, as the float
model computes it.

``W_q`` is the grid ai-edge-quantizer puts the weights on (``static_wi8_ai8`` and
``dynamic_wi8_afp32``): symmetric int8 per output channel, scale ``max|w| / 127``, rounded to
nearest. The quantizer then quantizes the corrected float file; it leaves the weights as they
were and quantizes the new bias like any other. The correction ignores the zero padding at the
borders of a convolution (where the input is 0, not its mean), which is small next to the
interior at the resolutions of image models.

On EfficientNet-Lite0 (docs/performance.md) it takes int8 weights with float activations from
90% to 97% top-1 agreement with float, and full int8 from 80% to 84%.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

_LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_FLOAT32 = 0  # TensorType.FLOAT32 in the TFLite schema


@dataclass(frozen=True)
class Correction:
    """What :func:`correct_biases` changed: the layers corrected, those it could not (no bias
    tensor, a weight that is not a constant float tensor, grouped convolutions), the number of
    calibration samples the input means came from, and the largest change of a bias relative
    to that bias tensor's largest magnitude."""

    layers: int
    skipped: int
    samples: int
    max_relative_change: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "bias correction of int8 weight rounding (Nagel et al. 2019)",
            "layers": self.layers,
            "skipped": self.skipped,
            "samples": self.samples,
            "max_relative_change": round(self.max_relative_change, 6),
        }


def int8_weight_grid(weight: NDArray[np.float32], axis: int) -> NDArray[np.float32]:
    """``weight`` rounded to ai-edge-quantizer's int8 grid: symmetric per channel along
    ``axis``, scale ``max|w| / 127``, as float."""
    others = tuple(i for i in range(weight.ndim) if i != axis)
    scale = np.abs(weight).max(axis=others, keepdims=True) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    return (np.clip(np.round(weight / scale), -127, 127) * scale).astype(np.float32)


def correct_biases(
    model: bytes, samples: Iterable[Mapping[str, NDArray[Any]]], signature: str = "serving_default"
) -> tuple[bytes, Correction]:
    """``model`` (a float ``.tflite``) with the bias of each convolution, depthwise convolution
    and fully connected layer corrected for the int8 rounding of its weights; what changed.

    ``samples`` are the calibration inputs, one dict of arrays by input name each (as the
    quantizer's ``calibrate`` takes them), run through the float model by LiteRT to get the
    mean input of every layer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    graph = flat.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def constant(index: int) -> NDArray[np.float32] | None:
        if index < 0:
            return None
        tensor = graph.tensors[index]
        data = flat.buffers[tensor.buffer].data if tensor.buffer else None
        if tensor.type != _FLOAT32 or data is None or len(data) == 0:
            return None
        return np.frombuffer(bytes(data), np.float32).reshape(tensor.shape)

    layers: list[tuple[str, Any, NDArray[np.float32], NDArray[np.float32]]] = []
    skipped = 0
    for op in graph.operators:
        code = flat.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
        if kind not in _LAYERS:
            continue
        inputs = list(op.inputs)
        weight = constant(inputs[1]) if len(inputs) > 1 else None
        bias = constant(inputs[2]) if len(inputs) > 2 else None
        if weight is None or bias is None:
            skipped += 1
            continue
        layers.append((kind, op, weight, bias))

    # The input mean of every layer, per channel, from the float model (no delegate, so every
    # intermediate tensor stays readable).
    interpreter = Interpreter(
        model_content=model,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    runner = interpreter.get_signature_runner(signature)
    wanted = sorted({int(op.inputs[0]) for _, op, _, _ in layers})
    sums: dict[int, NDArray[np.float64]] = {}
    count = 0
    for sample in samples:
        runner(**{k: np.asarray(v) for k, v in sample.items()})
        for index in wanted:
            x = interpreter.get_tensor(index)
            channel_mean = x.reshape(-1, x.shape[-1]).astype(np.float64).mean(axis=0)
            sums[index] = sums.get(index, 0) + channel_mean
        count += 1
    if count == 0:
        return model, Correction(0, skipped + len(layers), 0, 0.0)

    corrected = 0
    largest = 0.0
    for kind, op, weight, bias in layers:
        mean = sums[int(op.inputs[0])] / count
        if kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C * multiplier]
            if weight.shape[-1] % mean.shape[0]:
                skipped += 1
                continue
            # Output channel c reads input channel c // multiplier (a convolution of one input
            # channel to many becomes a depthwise convolution with a depth multiplier).
            mean = np.repeat(mean, weight.shape[-1] // mean.shape[0])
            error = weight - int8_weight_grid(weight, axis=3)
            shift = (error[0] * mean).sum(axis=(0, 1))
        elif kind == "CONV_2D":  # [O, kh, kw, I]
            if weight.shape[-1] != mean.shape[0]:
                skipped += 1  # grouped convolution
                continue
            error = weight - int8_weight_grid(weight, axis=0)
            shift = (error * mean).sum(axis=(1, 2, 3))
        else:  # FULLY_CONNECTED, [O, I]
            if weight.ndim != 2 or weight.shape[1] != mean.shape[0]:
                skipped += 1
                continue
            error = weight - int8_weight_grid(weight, axis=0)
            shift = error @ mean
        if shift.shape != bias.shape:
            skipped += 1
            continue
        new = (bias.astype(np.float64) + shift).astype(np.float32)
        scale = float(np.abs(bias).max()) or 1.0
        largest = max(largest, float(np.abs(shift).max()) / scale)
        buffer = flat.buffers[graph.tensors[op.inputs[2]].buffer]
        buffer.data = np.frombuffer(new.tobytes(), np.uint8)
        corrected += 1
    out = bytes(flatbuffer_utils.convert_object_to_bytearray(flat))
    return out, Correction(corrected, skipped, count, largest)
