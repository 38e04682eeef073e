"""Float request tensors to a model's own dtypes and its raw outputs back to float32.

The agent's versions of :func:`edgedl.runtime.quantize` and :func:`edgedl.runtime.dequantize`:
the same float32 arithmetic, so results equal running the bundle directly, with the
parameters turned into float32 scalars once per model and the input buffers kept from one
request to the next.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl import runtime
from edgedl.bundle import TensorSpec

Array = NDArray[Any]
Tensors = dict[str, Array]

# np.clip's ufunc, called without the Python wrapper np.clip adds (microseconds per request).
_clip: np.ufunc = getattr(np, "_core", np).umath.clip


class InputQuantizer:
    """Float inputs to the model's own dtypes, as :func:`edgedl.runtime.quantize` does them.

    Same arithmetic, but into buffers kept from one call to the next (one quantizer per
    worker slot, so one thread at a time): a 224x224x3 image otherwise allocates four
    600 kB temporaries per request, which costs a few percent of a MobileNetV2 inference.
    The parameters are float32 scalars made once (what NumPy turns the manifest's Python
    numbers into for float32 arithmetic anyway). The returned arrays are overwritten by the
    next call.
    """

    def __init__(self, specs: list[TensorSpec]) -> None:
        self._specs = specs
        self._plans = [_Quantization.of(spec) for spec in specs]
        self._buffers: dict[str, tuple[NDArray[np.float32], Array]] = {}

    def __call__(self, inputs: Mapping[str, Array]) -> Tensors:
        """``inputs`` in the model's dtypes: integer tensors quantized into the kept buffers,
        the others converted by :func:`edgedl.runtime.quantize`."""
        out: Tensors = {}
        for spec, plan in zip(self._specs, self._plans, strict=True):
            if plan is None:
                out[spec.name] = runtime.quantize(inputs[spec.name], spec)
                continue
            x = np.asarray(inputs[spec.name], dtype=np.float32)
            buffers = self._buffers.get(spec.name)
            if buffers is None or buffers[0].shape != x.shape:
                buffers = (np.empty(x.shape, np.float32), np.empty(x.shape, plan.dtype))
                self._buffers[spec.name] = buffers
            scratch, target = buffers
            np.divide(x, plan.scale, out=scratch)
            np.rint(scratch, out=scratch)
            np.add(scratch, plan.zero_point, out=scratch)
            _clip(scratch, plan.low, plan.high, out=target, casting="unsafe")
            out[spec.name] = target
        return out


class OutputDequantizer:
    """The model's raw outputs to float32, as :func:`edgedl.runtime.dequantize` does them.

    The same two float32 operations, with the parameters made float32 scalars once.
    """

    def __init__(self, specs: list[TensorSpec]) -> None:
        self._names = [spec.name for spec in specs]
        # (zero point, scale) as float32 scalars, None for a tensor without quantization
        self._plans = [
            None
            if (q := spec.quantization) is None
            else (np.float32(q.zero_point), np.float32(q.scale))
            for spec in specs
        ]

    def __call__(self, raw: Mapping[str, Array]) -> dict[str, NDArray[np.float32]]:
        """``raw`` as float32 arrays, dequantized where the output has a quantization."""
        out: dict[str, NDArray[np.float32]] = {}
        for name, plan in zip(self._names, self._plans, strict=True):
            if plan is None:
                out[name] = np.asarray(raw[name], dtype=np.float32)
                continue
            zero_point, scale = plan
            values = np.asarray(raw[name]).astype(np.float32)
            values -= zero_point
            values *= scale
            out[name] = values
        return out


class _Quantization:
    """A tensor's quantization parameters as the float32 scalars the arithmetic uses."""

    __slots__ = ("dtype", "high", "low", "scale", "zero_point")

    def __init__(self, spec: TensorSpec) -> None:
        q = spec.quantization
        assert q is not None
        self.dtype = np.dtype(spec.dtype)
        info = np.iinfo(self.dtype)
        self.scale = np.float32(q.scale)
        self.zero_point = np.float32(q.zero_point)
        self.low, self.high = np.float32(info.min), np.float32(info.max)

    @classmethod
    def of(cls, spec: TensorSpec) -> _Quantization | None:
        """The parameters of an integer tensor with a quantization, else None."""
        if spec.quantization is None or np.dtype(spec.dtype).kind not in "iu":
            return None
        return cls(spec)
