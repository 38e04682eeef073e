"""Source models: Keras (``.keras``/``.h5``), TensorFlow SavedModel, ONNX, or PyTorch.

A Keras model is exported to a SavedModel first, so Keras and SavedModel sources take one
path into TFLite and ONNX (tf2onnx's ``from_keras`` does not work with Keras 3; going through
the SavedModel's serving signature does, and keeps the signature's tensor names). A PyTorch
source is exported to ONNX (:mod:`.torch_source`), keeps its module for the TFLite targets
(:mod:`.torch_tflite`) and runs as itself for the reference.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edgedl.bundle import TensorSpec
from edgedl.errors import ConversionError, ModelError

from . import torch_source
from ._tf import import_tensorflow

SourceKind = Literal["keras", "saved_model", "onnx", "torch"]
KIND_NAMES = {"keras": "Keras", "saved_model": "a SavedModel", "onnx": "ONNX", "torch": "PyTorch"}
KERAS_SUFFIXES = {".keras", ".h5", ".hdf5"}
Arrays = dict[str, NDArray[np.float32]]


@dataclass
class SourceModel:
    """A loaded source model: its tensors, its size, and how to run it as the reference."""

    kind: SourceKind
    path: Path
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    saved_model_dir: Path | None
    _run: Callable[[Mapping[str, NDArray[Any]]], Arrays]
    onnx_path: Path | None = None
    torch_module: torch_source.TorchModule | None = None  # a PyTorch source's loaded module
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def predict(self, inputs: Mapping[str, NDArray[Any]], batch_size: int = 256) -> Arrays:
        """Run the source model on its inputs (batch first) in chunks of ``batch_size``."""
        n = next(iter(inputs.values())).shape[0]
        parts = [
            self._run({k: v[i : i + batch_size] for k, v in inputs.items()})
            for i in range(0, n, batch_size)
        ]
        return {s.name: np.concatenate([p[s.name] for p in parts]) for s in self.outputs}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def detect_kind(path: Path) -> SourceKind:
    """What kind of source ``path`` is, from its name and layout; :class:`ModelError` if none."""
    if torch_source.is_factory(str(path)):
        return "torch"
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise ModelError(f"{path} is a directory but not a SavedModel (no saved_model.pb)")
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix == ".onnx":
        return "onnx"
    if suffix in torch_source.TORCH_SUFFIXES:
        return "torch"
    raise ModelError(
        f"unsupported model format {path.name!r} (expected .keras, .h5, a SavedModel "
        "directory, .onnx, a PyTorch .pt/.pt2 file, or package.module:factory)"
    )


def load_source(
    path: str | os.PathLike[str],
    workdir: Path,
    state_dict: Path | None = None,
    sample_shape: tuple[int, ...] | Mapping[str, NDArray[Any]] | None = None,
    data: str | None = None,
) -> SourceModel:
    """Load a source model; a Keras model is exported to a SavedModel under ``workdir``.

    A PyTorch source needs ``sample_shape`` (one sample's input shape, from the data, or one
    sample of each named input for a module with several or integer inputs) and
    takes ``state_dict`` when it is a ``module:factory``; it is exported to ONNX in ``workdir``.
    ``data`` names where that shape came from (``"calibration data train.npz"``) for the
    :class:`~edgedl.errors.DataError` that data the module does not take raises.
    """
    p = Path(path)
    kind = detect_kind(p)
    if kind == "torch":
        if sample_shape is None:
            raise ModelError("a PyTorch source needs data to take its input shape from")
        return _load_torch(str(path), state_dict, sample_shape, workdir, data)
    if kind == "onnx":
        return _load_onnx(p)
    saved_model = p
    if kind == "keras":
        saved_model = _export_keras(p, workdir / "saved_model")
    return _load_saved_model(saved_model, kind, p)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_keras_file(path: Path) -> None:
    """Name a corrupt file plainly (Keras itself reports a bad .keras as 'File not found')."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a Keras model: a .keras file is a zip archive, this is not"
        )
    if path.suffix.lower() in (".h5", ".hdf5") and head != _HDF5_SIGNATURE:
        raise ModelError(f"{path} is not a Keras model: not an HDF5 file")


def _export_keras(path: Path, out: Path) -> Path:
    _check_keras_file(path)
    import_tensorflow()
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zipfile errors, h5py errors...
        raise ModelError(f"cannot read Keras model {path}: {_first_line(exc)}") from exc
    try:
        model.export(str(out), format="tf_saved_model", verbose=False)
    except Exception as exc:
        raise ConversionError(
            f"cannot export Keras model {path} to a SavedModel: {_first_line(exc)}"
        ) from exc
    return out


def _spec_from_tf(name: str, spec: Any) -> TensorSpec:
    shape = [-1 if d is None else int(d) for d in spec.shape.as_list()]
    return TensorSpec(name=name, shape=shape, dtype=spec.dtype.name)


def _load_saved_model(path: Path, kind: SourceKind, original: Path) -> SourceModel:
    tf = import_tensorflow()

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read SavedModel {path}: {_first_line(exc)}") from exc
    if "serving_default" not in loaded.signatures:
        raise ModelError(f"SavedModel {path} has no 'serving_default' signature")
    sig = loaded.signatures["serving_default"]
    in_sig: dict[str, Any] = sig.structured_input_signature[1]
    out_sig: dict[str, Any] = sig.structured_outputs
    inputs = [_spec_from_tf(n, s) for n, s in in_sig.items()]
    outputs = [_spec_from_tf(n, s) for n, s in out_sig.items()]
    non_float = [s.name for s in inputs if s.dtype not in ("float32", "float16")]
    if non_float:
        raise ConversionError(
            f"input {non_float[0]!r} is not a float tensor; edgedl converts float-input models"
        )

    def run(batch: Mapping[str, NDArray[Any]]) -> Arrays:
        out = sig(**{k: tf.constant(v, dtype=tf.float32) for k, v in batch.items()})
        return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in out.items()}

    # Keep the loaded object alive for as long as the closure: signatures hold weak refs.
    run.__dict__["_keepalive"] = loaded
    return SourceModel(
        kind=kind,
        path=original,
        size_bytes=_size_of(original),
        inputs=inputs,
        outputs=outputs,
        saved_model_dir=path,
        _run=run,
    )


_ONNX_DTYPES = {1: "float32", 10: "float16", 2: "uint8", 3: "int8", 6: "int32", 7: "int64"}


def _load_onnx(path: Path) -> SourceModel:
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf DecodeError, onnx ValidationError...
        raise ModelError(f"cannot read ONNX model {path}: {_first_line(exc)}") from exc
    initializers = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return TensorSpec(name=v.name, shape=shape, dtype=_ONNX_DTYPES.get(t.elem_type, "float32"))

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    # Float32 inputs, or integer ones (token ids, masks) that pass through unquantized.
    unsupported = [s for s in inputs if s.dtype not in ("float32", "int64", "int32")]
    if unsupported:
        raise ConversionError(
            f"input {unsupported[0].name!r} is {unsupported[0].dtype}; edgedl converts models "
            "whose inputs are float32, int64 or int32 tensors"
        )
    dtypes = {s.name: np.dtype(s.dtype) for s in inputs}
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from exc
    names = [s.name for s in outputs]
    fixed_batch = any(s.shape and s.shape[0] == 1 for s in inputs)

    def run(batch: Mapping[str, NDArray[Any]]) -> Arrays:
        feeds = {k: np.asarray(v, dtype=dtypes.get(k, np.float32)) for k, v in batch.items()}
        n = next(iter(feeds.values())).shape[0]
        if fixed_batch and n != 1:
            parts = [
                session.run(names, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)
            ]
            return {k: np.concatenate([p[j] for p in parts]) for j, k in enumerate(names)}
        return {
            k: np.asarray(v, dtype=np.float32)
            for k, v in zip(names, session.run(names, feeds), strict=True)
        }

    return SourceModel(
        kind="onnx",
        path=path,
        size_bytes=_size_of(path),
        inputs=inputs,
        outputs=outputs,
        saved_model_dir=None,
        _run=run,
        onnx_path=path,
    )


def _load_torch(
    spec: str,
    state_dict: Path | None,
    sample_shape: tuple[int, ...] | Mapping[str, NDArray[Any]],
    workdir: Path,
    data: str | None = None,
) -> SourceModel:
    import onnx

    model = torch_source.load_module(spec, state_dict)
    onnx_path = workdir / "torch.onnx"
    samples = None
    if isinstance(sample_shape, Mapping):
        order = torch_source.input_order(model, list(sample_shape))
        samples = {n: sample_shape[n] for n in order}
        sample_shape = ()
    exporter, notes = torch_source.export_onnx(
        model, sample_shape, onnx_path, samples=samples, data=data
    )
    proto = onnx.load(str(onnx_path))
    exported = _load_onnx(onnx_path)
    names = [s.name for s in exported.outputs]
    batch = exported.inputs[0].shape[0] if exported.inputs[0].shape else -1
    if batch > 0:
        notes.append(
            f"{Path(spec).name} was exported with a fixed batch of {batch}, so the model takes "
            f"{batch} sample{'s' if batch > 1 else ''} per run (the agent then runs a batch of "
            "requests in pieces of that size); for a batch axis, export it with dynamic_shapes "
            "giving dimension 0 a torch.export.Dim, e.g. {'x': {0: torch.export.Dim('batch')}} "
            "keyed by forward's argument name"
        )

    def run_named(feeds: Mapping[str, NDArray[Any]]) -> Arrays:
        assert samples is not None
        return dict(zip(names, model.run_named({n: feeds[n] for n in samples}), strict=True))

    def run(feeds: Mapping[str, NDArray[Any]]) -> Arrays:
        x = np.asarray(next(iter(feeds.values())), dtype=np.float32)
        if batch <= 0:
            return dict(zip(names, model.run(x), strict=True))
        # A torch.export program traced at a fixed batch size accepts only that size.
        n = x.shape[0]
        padded = np.concatenate([x, np.zeros((-n % batch, *x.shape[1:]), np.float32)])
        parts = [model.run(padded[i : i + batch]) for i in range(0, len(padded), batch)]
        return {k: np.concatenate([p[j] for p in parts])[:n] for j, k in enumerate(names)}

    files = [p for p in (Path(spec), state_dict) if p is not None and p.is_file()]
    return SourceModel(
        kind="torch",
        path=Path(spec),
        size_bytes=sum(_size_of(p) for p in files) or _size_of(onnx_path),
        inputs=exported.inputs,
        outputs=exported.outputs,
        saved_model_dir=None,
        _run=run_named if samples else run,
        onnx_path=onnx_path,
        torch_module=model,
        details={
            "form": model.form,
            "state_dict": str(state_dict) if state_dict else None,
            "exporter": exporter,
            "onnx_opset": max((o.version for o in proto.opset_import if not o.domain), default=0),
            "onnx_nodes": len(proto.graph.node),
        },
        warnings=[*model.warnings, *notes],
    )
