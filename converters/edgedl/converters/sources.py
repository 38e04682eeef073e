"""Source models: Keras (``.keras``/``.h5``), TensorFlow SavedModel, or ONNX.

A Keras model is exported to a SavedModel first, so Keras and SavedModel sources take one
path into TFLite and ONNX (tf2onnx's ``from_keras`` does not work with Keras 3; going through
the SavedModel's serving signature does, and keeps the signature's tensor names).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edgedl.bundle import TensorSpec
from edgedl.errors import ConversionError, ModelError

from ._tf import import_tensorflow

SourceKind = Literal["keras", "saved_model", "onnx"]
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

    def predict(self, inputs: Mapping[str, NDArray[Any]], batch_size: int = 256) -> Arrays:
        """Run the source model on float inputs (batch first) in chunks of ``batch_size``."""
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
    raise ModelError(
        f"unsupported model format {path.name!r} "
        "(expected .keras, .h5, a SavedModel directory, or .onnx)"
    )


def load_source(path: str | os.PathLike[str], workdir: Path) -> SourceModel:
    """Load a source model; a Keras model is exported to a SavedModel under ``workdir``."""
    p = Path(path)
    kind = detect_kind(p)
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
    non_float = [s.name for s in inputs if s.dtype != "float32"]
    if non_float:
        raise ConversionError(
            f"input {non_float[0]!r} is not a float32 tensor; edgedl converts float-input models"
        )
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from exc
    names = [s.name for s in outputs]
    fixed_batch = any(s.shape and s.shape[0] == 1 for s in inputs)

    def run(batch: Mapping[str, NDArray[Any]]) -> Arrays:
        feeds = {k: np.asarray(v, dtype=np.float32) for k, v in batch.items()}
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
    )
