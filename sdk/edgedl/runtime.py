"""Open a bundle and run it: LiteRT / tflite-runtime / tf.lite, or ONNX Runtime.

:func:`load` picks the first installed backend for the bundle's runtime (for TFLite bundles:
``ai_edge_litert``, then ``tflite_runtime``, then ``tensorflow.lite``) and returns a
:class:`Runner` that takes and returns **float** arrays: integer inputs are quantized and
integer outputs dequantized with the scale and zero point in the manifest, so callers never
feed raw int8 by mistake (the most common TFLite bug, tensorflow#53278).

tflite-runtime 2.14 (its last release) is built against NumPy 1 and fails to import under
NumPy 2; LiteRT (``ai-edge-litert``) is its maintained successor and works with both.
"""

from __future__ import annotations

import importlib
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .bundle import Bundle, Manifest, TensorSpec
from .devices import DEVICES
from .errors import DataError, RuntimeUnavailableError

Array = NDArray[Any]

TFLITE_BACKENDS: dict[str, str] = {
    "litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}
ONNX_BACKENDS: dict[str, str] = {"onnxruntime": "onnxruntime"}
_RUNTIME_BACKENDS = {"litert": TFLITE_BACKENDS, "onnxruntime": ONNX_BACKENDS}


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter off the user's terminal (call before importing it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def import_backend(backend: str) -> Any:
    """The module of a backend (``Interpreter`` for TFLite ones); ImportError when missing."""
    module = {**TFLITE_BACKENDS, **ONNX_BACKENDS}[backend]
    if backend == "tensorflow":
        quiet_tensorflow()
        # tf.lite is an attribute of the lazily built API, not the tensorflow.lite package.
        return importlib.import_module("tensorflow").lite
    return importlib.import_module(module)


def available_backends(runtime: str | None = None) -> list[str]:
    """Backends that import on this machine, in order of preference (optionally for one runtime)."""
    names = (
        list(_RUNTIME_BACKENDS.get(runtime, {}))
        if runtime
        else [
            *TFLITE_BACKENDS,
            *ONNX_BACKENDS,
        ]
    )
    found = []
    for name in names:
        try:
            import_backend(name)
        except Exception:  # a broken wheel (e.g. NumPy ABI mismatch) raises more than ImportError
            continue
        found.append(name)
    return found


def first_backend(runtime: str) -> Any:
    """The module of the first backend of ``runtime`` that imports, in order of preference.

    Unlike :func:`available_backends` it stops at the first: TensorFlow, the last resort for
    ``litert``, is imported only where LiteRT is not installed.
    """
    for name in _RUNTIME_BACKENDS.get(runtime, {}):
        try:
            return import_backend(name)
        except Exception:  # a broken wheel (e.g. NumPy ABI mismatch) raises more than ImportError
            continue
    raise RuntimeUnavailableError(f"no {runtime} backend imports on this machine")


def quantize(x: Array, spec: TensorSpec) -> Array:
    """Float data to the tensor's dtype, using its quantization when it is an integer tensor."""
    dtype = np.dtype(spec.dtype)
    if spec.quantization is None or dtype.kind not in "iu":
        return np.asarray(x).astype(dtype, copy=False)
    q = spec.quantization
    info = np.iinfo(dtype)
    scaled = np.round(np.asarray(x, dtype=np.float32) / q.scale) + q.zero_point
    clipped: Array = np.clip(scaled, info.min, info.max).astype(dtype)
    return clipped


def dequantize(x: Array, spec: TensorSpec) -> NDArray[np.float32]:
    """A tensor's raw values to float32, using its quantization when it has one."""
    if spec.quantization is None:
        return np.asarray(x, dtype=np.float32)
    q = spec.quantization
    return ((np.asarray(x, dtype=np.float32) - q.zero_point) * q.scale).astype(np.float32)


class Runner(ABC):
    """A loaded model. Thread-safe: calls are serialized (interpreters are not re-entrant).

    ``run`` takes float arrays with the batch on the first axis, keyed by input name, and
    returns float32 arrays keyed by output name.
    """

    backend: str

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._lock = threading.Lock()

    @property
    def inputs(self) -> list[TensorSpec]:
        """The model's input specs, in order."""
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        """The model's output specs, in order."""
        return self.manifest.outputs

    def check_inputs(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Validate names and per-sample shapes; raise :class:`DataError` saying what is wrong."""
        expected = {s.name for s in self.inputs}
        unknown = set(inputs) - expected
        if unknown:
            raise DataError(f"unknown input {sorted(unknown)[0]!r} (inputs: {sorted(expected)})")
        checked: dict[str, Array] = {}
        batch: int | None = None
        for spec in self.inputs:
            if spec.name not in inputs:
                raise DataError(f"missing input {spec.name!r}")
            arr = np.asarray(inputs[spec.name])
            want = spec.sample_shape
            got = arr.shape[1:]
            if arr.ndim != len(spec.shape) or any(
                w != -1 and w != g for w, g in zip(want, got, strict=True)
            ):
                raise DataError(
                    f"input {spec.name!r}: expected shape {_fmt_shape(spec.shape)}, "
                    f"got {_fmt_shape(list(arr.shape))}"
                )
            if arr.dtype.kind not in "fiub":
                raise DataError(f"input {spec.name!r}: expected numbers, got dtype {arr.dtype}")
            if batch is not None and arr.shape[0] != batch:
                raise DataError("all inputs must have the same batch size")
            batch = arr.shape[0]
            checked[spec.name] = arr
        return checked

    def run(self, inputs: Mapping[str, Array]) -> dict[str, NDArray[np.float32]]:
        """Run a batch of float inputs; return float32 outputs keyed by output name."""
        checked = self.check_inputs(inputs)
        raw_in = {s.name: quantize(checked[s.name], s) for s in self.inputs}
        raw_out = self.run_raw(raw_in)
        return {s.name: dequantize(raw_out[s.name], s) for s in self.outputs}

    def predict(self, x: Array) -> NDArray[np.float32]:
        """Run a single-input, single-output model on a float batch."""
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise DataError("predict() needs a model with one input and one output; use run()")
        return self.run({self.inputs[0].name: x})[self.outputs[0].name]

    def run_raw(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        """Run already-quantized inputs (the model's own dtypes); outputs are not dequantized."""
        with self._lock:
            return self._invoke(inputs)

    @abstractmethod
    def _invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]: ...


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"


class TFLiteRunner(Runner):
    """A TFLite model in LiteRT, tflite-runtime or tf.lite (whichever ``backend`` names)."""

    def __init__(self, manifest: Manifest, model_path: str, backend: str, threads: int) -> None:
        super().__init__(manifest)
        self.backend = backend
        module = import_backend(backend)
        self._interp = module.Interpreter(
            model_path=model_path, num_threads=threads if threads > 0 else None
        )
        self._interp.allocate_tensors()
        self._in_index, self._out_index = self._tensor_indices()
        details = {d["index"]: d for d in self._interp.get_input_details()}
        self._batch_fixed = {
            name: int(details[i]["shape_signature"][0]) != -1
            if len(details[i]["shape_signature"])
            else True
            for name, i in self._in_index.items()
        }
        self._shapes: dict[int, tuple[int, ...]] = {
            i: tuple(details[i]["shape"]) for i in self._in_index.values()
        }

    def _tensor_indices(self) -> tuple[dict[str, int], dict[str, int]]:
        """Map manifest names to tensor indices: by signature when there is one, else by order."""
        in_specs, out_specs = self.manifest.inputs, self.manifest.outputs
        try:
            sig = self._interp.get_signature_runner()
            sig_in = {n: d["index"] for n, d in sig.get_input_details().items()}
            sig_out = {n: d["index"] for n, d in sig.get_output_details().items()}
            if {s.name for s in in_specs} <= set(sig_in) and {s.name for s in out_specs} <= set(
                sig_out
            ):
                return (
                    {s.name: sig_in[s.name] for s in in_specs},
                    {s.name: sig_out[s.name] for s in out_specs},
                )
        except (ValueError, KeyError, AttributeError):
            pass
        in_details = self._interp.get_input_details()
        out_details = self._interp.get_output_details()
        return (
            {s.name: d["index"] for s, d in zip(in_specs, in_details, strict=False)},
            {s.name: d["index"] for s, d in zip(out_specs, out_details, strict=False)},
        )

    def _invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        n = next(iter(inputs.values())).shape[0]
        if n != 1 and any(self._batch_fixed.values()):
            # A model exported with a fixed batch of 1: run the samples one at a time.
            parts = [self._invoke({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(n)]
            return {k: np.concatenate([p[k] for p in parts]) for k in self._out_index}
        resized = False
        for name, idx in self._in_index.items():
            shape = tuple(inputs[name].shape)
            if self._shapes[idx] != shape:
                self._interp.resize_tensor_input(idx, list(shape), strict=False)
                self._shapes[idx] = shape
                resized = True
        if resized:
            self._interp.allocate_tensors()
        for name, idx in self._in_index.items():
            self._interp.set_tensor(idx, np.ascontiguousarray(inputs[name]))
        self._interp.invoke()
        return {name: self._interp.get_tensor(idx).copy() for name, idx in self._out_index.items()}


class OnnxRunner(Runner):
    """An ONNX model in ONNX Runtime with the first of ``providers`` that is available."""

    backend = "onnxruntime"

    def __init__(
        self,
        manifest: Manifest,
        model_path: str,
        threads: int,
        providers: Sequence[str] | None,
    ) -> None:
        super().__init__(manifest)
        ort = import_backend("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(threads, 0)
        options.log_severity_level = 3
        # ONNX Runtime's CPU arena keeps the largest batch's tensors for the session's life
        # (a 50 MiB request left 20 MiB behind); plain malloc gives them back.
        options.enable_cpu_mem_arena = False
        available = set(ort.get_available_providers())
        self.requested_providers: list[str] = list(providers or ["CPUExecutionProvider"])
        wanted = [p for p in self.requested_providers if p in available]
        if "CPUExecutionProvider" not in wanted:
            wanted.append("CPUExecutionProvider")
        try:
            self._session = ort.InferenceSession(model_path, options, providers=wanted)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise RuntimeUnavailableError(
                f"ONNX Runtime cannot load {model_path}: {str(exc).splitlines()[0]}"
            ) from exc
        self.providers: list[str] = list(self._session.get_providers())
        self._batch_fixed = any(
            isinstance(i.shape[0], int) and i.shape[0] == 1
            for i in self._session.get_inputs()
            if i.shape
        )

    def _invoke(self, inputs: Mapping[str, Array]) -> dict[str, Array]:
        n = next(iter(inputs.values())).shape[0]
        names = [s.name for s in self.outputs]
        if n != 1 and self._batch_fixed:
            parts = [
                self._session.run(names, {k: v[i : i + 1] for k, v in inputs.items()})
                for i in range(n)
            ]
            return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(names)}
        results = self._session.run(names, dict(inputs))
        return dict(zip(names, results, strict=True))


def default_providers(manifest: Manifest) -> list[str] | None:
    """The execution providers of the device profile ``manifest`` was converted for, if any."""
    profile = DEVICES.get(manifest.device or "")
    return list(profile.execution_providers) if profile and profile.execution_providers else None


def load(
    bundle: Bundle | str | os.PathLike[str],
    *,
    backend: str | None = None,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> Runner:
    """Open ``bundle`` (verifying its sha256) and return a :class:`Runner` for it.

    ``backend`` forces one backend (see :data:`TFLITE_BACKENDS`, :data:`ONNX_BACKENDS`);
    ``threads`` defaults to the machine's core count (0 lets ONNX Runtime decide);
    ``providers`` are ONNX Runtime execution providers in order of preference; unavailable
    ones are skipped and the CPU provider is always last. Left out, they come from the device
    profile the bundle was converted for (``edgedl convert --device jetson-orin`` asks for
    TensorRT, then CUDA), so a bundle made for a Jetson uses its GPU without extra settings.
    """
    b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    runtime = b.manifest.runtime
    if providers is None:
        providers = default_providers(b.manifest)
    candidates = _RUNTIME_BACKENDS[runtime]
    if backend is not None and backend not in candidates:
        raise RuntimeUnavailableError(
            f"backend {backend!r} cannot run a {runtime} bundle (use one of {', '.join(candidates)})"
        )
    order = [backend] if backend else list(candidates)
    if threads is None:
        threads = os.cpu_count() or 1
    errors: list[str] = []
    for name in order:
        try:
            import_backend(name)
        except Exception as exc:
            errors.append(
                f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            continue
        if runtime == "onnxruntime":
            return OnnxRunner(b.manifest, str(b.model_path), threads, providers)
        return TFLiteRunner(b.manifest, str(b.model_path), name, threads)
    hint = "pip install ai-edge-litert" if runtime == "litert" else "pip install onnxruntime"
    raise RuntimeUnavailableError(
        f"no {runtime} runtime could be imported ({'; '.join(errors)}); try: {hint}"
    )
