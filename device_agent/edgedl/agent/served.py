"""A served model: one bundle, ``instances`` interpreters and the :class:`Batcher` in front.

:class:`ServedModel` is what the HTTP layer, the in-process API, ``edgedl agent batch`` and
the rollout strategies talk to. Requests go through three calls:

* :meth:`ServedModel.submit` validates the inputs (names, shapes, numbers, NaN/Inf per the
  ``nonfinite`` setting) and queues them; it raises a :class:`~edgedl.errors.ServingError`
  subclass at once for bad input (400), a full queue (429) or a stopping agent (503);
* the returned future resolves to float32 outputs keyed by output name, or fails with
  :class:`InferenceFailed` (500) or :class:`~edgedl.agent.batcher.DeadlineExceeded` (504);
* :meth:`ServedModel.finish` records the request's outcome with every observer.

:meth:`ServedModel.submit_async` is :meth:`~ServedModel.submit` for a caller on an event loop
(the HTTP layer): it returns an :class:`asyncio.Future` of that loop, which the batcher
resolves with one thread-safe call per batch instead of one per request.

:meth:`ServedModel.infer` does all three for in-process callers. Anything that behaves like a
served model for a request (a rollout's canary split or shadow pair) implements
:class:`Servable`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edgedl import runtime
from edgedl.bundle import Bundle, Manifest, TensorSpec
from edgedl.errors import DataError, ServingError
from edgedl.profile import Profile

from .batcher import Batcher, DeadlineExceeded, QueueFull, ShuttingDown
from .observe import InferenceObserver
from .quantization import InputQuantizer, OutputDequantizer
from .serving_config import ModelConfig

__all__ = [
    "BadInput",
    "InferenceFailed",
    "InputQuantizer",
    "Observers",
    "OutputDequantizer",
    "Servable",
    "ServedModel",
]

log = logging.getLogger(__name__)

Array = NDArray[Any]
Tensors = dict[str, Array]

# KServe v2 datatypes of the tensors a client sends and receives. Quantized tensors are
# exchanged as FP32: the agent quantizes and dequantizes with the manifest's parameters.
DATATYPES: dict[str, str] = {
    "float32": "FP32",
    "float16": "FP16",
    "int8": "INT8",
    "uint8": "UINT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
}


class BadInput(ServingError, DataError):
    """The request's tensors do not fit the model (names, shape, datatype, NaN/Inf)."""

    status = 400
    kind = "bad_input"


class InferenceFailed(ServingError):
    """The model raised while running a batch."""

    status = 500
    kind = "inference"


def client_datatype(spec: TensorSpec) -> str:
    """The datatype a client sends or receives for this tensor (FP32 for quantized ones)."""
    if spec.quantization is not None or spec.dtype.startswith("float"):
        return "FP32"
    return DATATYPES[spec.dtype]


def client_dtype(spec: TensorSpec) -> np.dtype[Any]:
    """The NumPy dtype matching :func:`client_datatype`."""
    if spec.quantization is not None or spec.dtype.startswith("float"):
        return np.dtype(np.float32)
    return np.dtype(spec.dtype)


class Observers:
    """Fans every serving event out to the registered observers, shielding the caller.

    Registration copies the tuple, so the request path iterates without a lock.
    """

    def __init__(self) -> None:
        self._observers: tuple[InferenceObserver, ...] = ()
        self._lock = threading.Lock()

    def add(self, observer: InferenceObserver) -> None:
        """Register ``observer`` for every model's events."""
        with self._lock:
            self._observers = (*self._observers, observer)

    def remove(self, observer: InferenceObserver) -> None:
        """Stop sending events to ``observer``."""
        with self._lock:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def on_request(self, model: str, version: str, latency_s: float, ok: bool) -> None:
        """Tell every observer that a request finished."""
        for o in self._observers:
            try:
                o.on_request(model, version, latency_s, ok)
            except Exception:
                log.exception("observer %r failed in on_request", o)

    def on_batch(
        self,
        model: str,
        version: str,
        batch_size: int,
        latency_s: float,
        inputs: Mapping[str, Array],
        outputs: Mapping[str, Array],
    ) -> None:
        """Tell every observer that a batch ran."""
        for o in self._observers:
            try:
                o.on_batch(model, version, batch_size, latency_s, inputs, outputs)
            except Exception:
                log.exception("observer %r failed in on_batch", o)

    def on_error(self, model: str, version: str, kind: str) -> None:
        """Tell every observer that a request failed."""
        for o in self._observers:
            try:
                o.on_error(model, version, kind)
            except Exception:
                log.exception("observer %r failed in on_error", o)

    def on_rejected(self, model: str, version: str, reason: str) -> None:
        """Tell every observer that a request was turned away."""
        for o in self._observers:
            try:
                o.on_rejected(model, version, reason)
            except Exception:
                log.exception("observer %r failed in on_rejected", o)

    def on_queue_depth(self, model: str, depth: int) -> None:
        """Tell every observer the queue depth."""
        for o in self._observers:
            try:
                o.on_queue_depth(model, depth)
            except Exception:
                log.exception("observer %r failed in on_queue_depth", o)


class Servable(Protocol):
    """What the API needs from whatever answers requests for a model name."""

    name: str
    version: str
    manifest: Manifest
    input_datatypes: dict[str, str]  # input name -> the KServe datatype a client sends

    @property
    def ready(self) -> bool:
        """True when it can take requests."""

    def submit(
        self, inputs: Mapping[str, Array], timeout_s: float | None = None
    ) -> Future[Tensors]:
        """Validate and queue a request; raise a ServingError when it cannot be queued."""

    def finish(self, started: float, error: BaseException | None) -> None:
        """Record a finished request (``started`` from time.perf_counter)."""


class ServedModel:
    """A bundle being served: ``instances`` runners behind one :class:`Batcher`."""

    def __init__(self, bundle: Bundle, config: ModelConfig, observers: Observers) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.name = self.manifest.name
        self.version = self.manifest.version
        self.config = config
        self.observers = observers
        self.reference: Profile | None = self.manifest.reference_profile()
        self.nonfinite_values = 0  # NaN/Inf input values accepted with nonfinite = "count"
        self._reject_nonfinite = config.nonfinite == "reject"
        self._timeout_s = config.timeout_ms / 1000.0
        self._input_specs = {s.name: s for s in self.manifest.inputs}
        self._input_checks = [_InputCheck(s) for s in self.manifest.inputs]
        self.input_datatypes = {s.name: client_datatype(s) for s in self.manifest.inputs}
        self._runners = [
            runtime.load(bundle, backend=config.backend, threads=config.threads)
            for _ in range(config.instances)
        ]
        self._quantizers = [InputQuantizer(self.manifest.inputs) for _ in self._runners]
        self._dequantize = OutputDequantizer(self.manifest.outputs)
        # A model exported with a fixed batch dimension runs one sample at a time anyway.
        self.fixed_batch = any(s.shape and s.shape[0] != -1 for s in self.manifest.inputs)
        self._batcher = Batcher(
            self._run_batch,
            max_batch_size=1 if self.fixed_batch else config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_ms / 1000.0,
            queue_size=config.queue_size,
            workers=config.instances,
            on_queue_depth=functools.partial(observers.on_queue_depth, self.name),
            name=f"{self.name}:{self.version}",
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], config: ModelConfig, observers: Observers
    ) -> ServedModel:
        """Open (and verify) the bundle at ``path`` and load its interpreters."""
        return cls(Bundle.open(path), config, observers)

    @property
    def ready(self) -> bool:
        """True while the batcher's workers are running."""
        return self._batcher.running

    @property
    def batcher(self) -> Batcher:
        """The model's batcher (its queue and workers)."""
        return self._batcher

    def start(self) -> None:
        """Start serving (the batcher's worker threads)."""
        self._batcher.start()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; finish (``drain``) or fail the queued ones."""
        self._batcher.stop(drain=drain, timeout=timeout)

    def validate(self, inputs: Mapping[str, Array]) -> tuple[Tensors, int]:
        """Check a request's tensors against the manifest; return them and the batch size.

        Raise :class:`BadInput` saying what is wrong.
        """
        specs = self._input_specs
        for name in inputs:
            if name not in specs:
                raise BadInput(f"unknown input {name!r} (the model's inputs: {sorted(specs)})")
        checked: Tensors = {}
        batch = -1
        for check in self._input_checks:
            name = check.name
            if name not in inputs:
                raise BadInput(f"missing input {name!r}")
            arr = np.asarray(inputs[name])
            kind = arr.dtype.kind
            if kind not in "fiu":
                raise BadInput(f"input {name!r}: expected numbers, got dtype {arr.dtype}")
            shape = arr.shape
            if not check.fits(shape):
                raise BadInput(
                    f"input {name!r}: expected shape {_fmt(check.spec.shape)}, got {_fmt(shape)}"
                )
            if shape[0] == 0:
                raise BadInput(f"input {name!r}: empty batch (0 samples)")
            if batch not in (-1, shape[0]):
                raise BadInput("all inputs must have the same batch size")
            batch = shape[0]
            if kind == "f" and not np.isfinite(arr).all():
                bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
                if self._reject_nonfinite:
                    raise BadInput(
                        f"input {name!r} holds {bad} NaN/Inf value{'s' if bad != 1 else ''} "
                        '(the agent is configured with nonfinite = "reject")'
                    )
                self.nonfinite_values += bad
                if check.spec.quantization is not None:
                    # An integer tensor has no NaN: count it as 0 (±Inf saturates anyway).
                    arr = np.where(np.isnan(arr), np.zeros((), arr.dtype), arr)
            checked[name] = arr
        return checked, batch

    def submit(
        self, inputs: Mapping[str, Array], timeout_s: float | None = None
    ) -> Future[Tensors]:
        """Validate and queue one request; see the module docstring for what it raises."""
        checked, size = self.validate(inputs)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self._timeout_s)
        return self._batcher.submit(checked, size, deadline)

    def submit_async(
        self,
        inputs: Mapping[str, Array],
        timeout_s: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> asyncio.Future[Tensors]:
        """Like :meth:`submit`, returning a future of ``loop`` (default: the running loop).

        Call it from the loop's thread; it raises what :meth:`submit` raises. Cancel the
        future to give up on the request.
        """
        checked, size = self.validate(inputs)
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self._timeout_s)
        if loop is None:
            loop = asyncio.get_running_loop()
        return self._batcher.submit_async(checked, size, deadline, loop)

    def finish(self, started: float, error: BaseException | None) -> None:
        """Record one finished request with the observers (``started``: time.perf_counter)."""
        latency = time.perf_counter() - started
        obs = self.observers
        if error is None:
            obs.on_request(self.name, self.version, latency, True)
            return
        kind = getattr(error, "kind", "inference")
        if isinstance(error, (QueueFull, ShuttingDown)):
            obs.on_rejected(self.name, self.version, kind)
        else:
            obs.on_error(self.name, self.version, kind)
        obs.on_request(self.name, self.version, latency, False)

    def infer(self, inputs: Mapping[str, Array], timeout_s: float | None = None) -> Tensors:
        """Run one request in process and record it like an API call.

        It runs in the caller's thread when the model is idle (see
        :meth:`~edgedl.agent.batcher.Batcher.call`), through the queue otherwise.
        """
        started = time.perf_counter()
        wait = timeout_s if timeout_s is not None else self._timeout_s
        try:
            checked, size = self.validate(inputs)
            future = self._batcher.call(checked, size, time.monotonic() + wait)
            try:
                outputs = future.result(timeout=wait)
            except (FutureTimeout, CancelledError) as exc:
                future.cancel()
                raise DeadlineExceeded(f"no answer within {wait * 1000:.0f} ms") from exc
        except ServingError as exc:
            self.finish(started, exc)
            raise
        self.finish(started, None)
        return outputs

    def metadata(self, versions: list[str] | None = None) -> dict[str, Any]:
        """The model's Open Inference Protocol metadata."""
        m = self.manifest
        return {
            "name": self.name,
            "versions": versions or [self.version],
            "platform": "tflite" if m.runtime == "litert" else "onnxruntime_onnx",
            "inputs": [_tensor_metadata(s) for s in m.inputs],
            "outputs": [_tensor_metadata(s) for s in m.outputs],
        }

    def _run_batch(self, worker: int, inputs: Tensors) -> Tensors:
        started = time.perf_counter()
        try:
            # Runner.run without its input checks: validate() already did them.
            raw = self._runners[worker].run_raw(self._quantizers[worker](inputs))
            outputs = self._dequantize(raw)
        except Exception as exc:
            log.warning("%s %s: inference failed: %s", self.name, self.version, exc)
            raise InferenceFailed(
                f"model {self.name!r} version {self.version} failed: "
                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            ) from exc
        latency = time.perf_counter() - started
        size = next(iter(inputs.values())).shape[0]
        self.observers.on_batch(self.name, self.version, size, latency, inputs, outputs)
        return outputs


class _InputCheck:
    """What :meth:`ServedModel.validate` checks of one input, prepared once."""

    __slots__ = ("name", "ndim", "sample_shape", "spec")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.spec = spec
        self.ndim = len(spec.shape)
        tail = tuple(spec.shape[1:])
        # Without wildcards past the batch, a tuple comparison checks every dimension.
        self.sample_shape = tail if -1 not in tail else None

    def fits(self, shape: tuple[int, ...]) -> bool:
        """True when ``shape`` has the spec's rank and every fixed dimension after the batch."""
        if len(shape) != self.ndim:
            return False
        if self.sample_shape is not None:
            return shape[1:] == self.sample_shape
        return all(w in (-1, g) for w, g in zip(self.spec.shape[1:], shape[1:], strict=True))


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": client_datatype(spec), "shape": list(spec.shape)}


def _fmt(shape: Any) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"
