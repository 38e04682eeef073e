"""Bias correction of a float ``.tflite`` before its weights are quantized to int8.

Rounding a layer's weights to int8 changes the layer's output by ``(W_q - W) x``. Over the
data that difference has a mean per output channel, ``(W_q - W) E[x]``, which does not average
out: it shifts every activation of that channel by the same amount, and the next layers carry
the shift on. Depthwise convolutions (9 or 25 weights per channel) and inputs that come out
of a ReLU6, whose mean is far from zero, make the shift large. Bias correction (Nagel et
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
90% to 97% top-1 agreement with float, and full int8 (with :mod:`.litert_ranges`) from 88% to
94%.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
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
        """The report's ``calibration.bias_correction``."""
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
    model: bytes,
    samples: Iterable[Mapping[str, NDArray[Any]]],
    signature: str = "serving_default",
    keep_float: Collection[str] = (),
) -> tuple[bytes, Correction]:
    """``model`` (a float ``.tflite``) with the bias of each convolution, depthwise convolution
    and fully connected layer corrected for the int8 rounding of its weights; what changed.

    ``samples`` are the calibration inputs, one dict of arrays by input name each (as the
    quantizer's ``calibrate`` takes them), run through the float model by LiteRT to get the
    mean input of every layer. Layers whose output tensor is named in ``keep_float`` are the
    ones the quantizer will leave in float: their biases stay as they are."""
    return BiasCorrection(model, samples, signature).apply(keep_float)


class BiasCorrection:
    """The layers of a float ``.tflite`` and their mean inputs over the calibration data,
    measured once; :meth:`apply` writes corrected models (for several choices of the layers
    kept in float, as a mixed-precision search needs)."""

    def __init__(
        self,
        model: bytes,
        samples: Iterable[Mapping[str, NDArray[Any]]],
        signature: str = "serving_default",
    ) -> None:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self._model = model
        flat = _read(model)
        graph = flat.subgraphs[0]
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        # (op index, kind) of every layer whose weight and bias are constant float tensors.
        self._layers: list[tuple[int, str]] = []
        self._skipped = 0
        for i, op in enumerate(graph.operators):
            code = flat.operatorCodes[op.opcodeIndex]
            kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")
            if kind not in _LAYERS:
                continue
            inputs = list(op.inputs)
            if len(inputs) < 3 or _constant(flat, inputs[1]) is None:
                self._skipped += 1
                continue
            if _constant(flat, inputs[2]) is None:
                self._skipped += 1
                continue
            self._layers.append((i, kind))

        # The input mean of every layer, per channel, from the float model (no delegate, so
        # every intermediate tensor stays readable).
        interpreter = Interpreter(
            model_content=model,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        runner = interpreter.get_signature_runner(signature)
        wanted = sorted({int(graph.operators[i].inputs[0]) for i, _ in self._layers})
        sums: dict[int, NDArray[np.float64]] = {}
        self._count = 0
        for sample in samples:
            runner(**{k: np.asarray(v) for k, v in sample.items()})
            for index in wanted:
                x = interpreter.get_tensor(index)
                channel_mean = x.reshape(-1, x.shape[-1]).astype(np.float64).mean(axis=0)
                sums[index] = sums.get(index, 0) + channel_mean
            self._count += 1
        self._means = {k: v / max(self._count, 1) for k, v in sums.items()}

    def apply(self, keep_float: Collection[str] = ()) -> tuple[bytes, Correction]:
        """The model with every layer's bias corrected but those whose output tensor is named
        in ``keep_float``; what changed."""
        if self._count == 0:
            return self._model, Correction(0, self._skipped + len(self._layers), 0, 0.0)
        from ai_edge_litert.tools import flatbuffer_utils

        keep = set(keep_float)
        flat = _read(self._model)
        graph = flat.subgraphs[0]
        corrected, skipped, largest = 0, self._skipped, 0.0
        for i, kind in self._layers:
            op = graph.operators[i]
            if _name(graph.tensors[op.outputs[0]].name) in keep:
                continue
            weight = _constant(flat, op.inputs[1])
            bias = _constant(flat, op.inputs[2])
            assert weight is not None and bias is not None
            shift = _shift(kind, weight, self._means[int(op.inputs[0])])
            if shift is None or shift.shape != bias.shape:
                skipped += 1
                continue
            new = (bias.astype(np.float64) + shift).astype(np.float32)
            scale = float(np.abs(bias).max()) or 1.0
            largest = max(largest, float(np.abs(shift).max()) / scale)
            flat.buffers[graph.tensors[op.inputs[2]].buffer].data = np.frombuffer(
                new.tobytes(), np.uint8
            )
            corrected += 1
        out = bytes(flatbuffer_utils.convert_object_to_bytearray(flat))
        return out, Correction(corrected, skipped, self._count, largest)


def _shift(
    kind: str, weight: NDArray[np.float32], mean: NDArray[np.float64]
) -> NDArray[np.float64] | None:
    """``(W - W_q) E[x]`` per output channel of one layer, or None for a layout this does not
    handle (a grouped convolution)."""
    if kind == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C * multiplier]
        if weight.shape[-1] % mean.shape[0]:
            return None
        # Output channel c reads input channel c // multiplier (a convolution of one input
        # channel to many becomes a depthwise convolution with a depth multiplier).
        mean = np.repeat(mean, weight.shape[-1] // mean.shape[0])
        error = weight - int8_weight_grid(weight, axis=3)
        return np.asarray((error[0] * mean).sum(axis=(0, 1)))
    if kind == "CONV_2D":  # [O, kh, kw, I]
        if weight.shape[-1] != mean.shape[0]:
            return None
        error = weight - int8_weight_grid(weight, axis=0)
        return np.asarray((error * mean).sum(axis=(1, 2, 3)))
    if weight.ndim != 2 or weight.shape[1] != mean.shape[0]:  # FULLY_CONNECTED, [O, I]
        return None
    error = weight - int8_weight_grid(weight, axis=0)
    return np.asarray(error @ mean)


def _read(model: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def _constant(flat: Any, index: int) -> NDArray[np.float32] | None:
    """The value of tensor ``index`` of the first subgraph when it is a constant float32."""
    if index < 0:
        return None
    tensor = flat.subgraphs[0].tensors[index]
    data = flat.buffers[tensor.buffer].data if tensor.buffer else None
    if tensor.type != _FLOAT32 or data is None or len(data) == 0:
        return None
    return np.frombuffer(bytes(data), np.float32).reshape(tensor.shape)


def _name(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
