"""Calibration and validation data: one loader for every file format.

``load_dataset`` reads ``.npy`` (inputs only), ``.npz`` (key ``x``, optional ``y`` labels and
``labels`` class names) or a folder of images or WAV files (class sub-folders become labels)
and checks it against the model's input: numbers only, the right per-sample shape, no NaN or
Inf (the error names the offending sample). Every format ends as one :class:`Dataset`, so a
converter never cares where its samples came from.

A model with several inputs, or with integer inputs (token ids and an attention mask), takes
an ``.npz`` holding one array per input name (``load_named_inputs``); integer inputs keep
their integer values, and the Dataset's ``inputs`` hold every array by name.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
AUDIO_SUFFIXES = {".wav"}


@dataclass
class Dataset:
    """Samples for one model input (float32, batch first) with optional integer labels."""

    x: NDArray[np.float32]
    y: NDArray[np.int64] | None
    source: str
    sample_names: list[str] | None = None
    class_names: list[str] | None = None
    # Every input by name, in its own dtype, for a model with several or integer inputs.
    inputs: dict[str, NDArray[Any]] | None = None
    # Set on a subset drawn by :func:`calibration_subset`: how many samples the data held.
    drawn_from: int | None = None

    def feeds(self, name: str, start: int = 0, stop: int | None = None) -> dict[str, NDArray[Any]]:
        """Samples ``start:stop`` of every input by name (``{name: x}`` for a single input)."""
        arrays = self.inputs if self.inputs is not None else {name: self.x}
        return {k: v[start:stop] for k, v in arrays.items()}

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def sample_name(self, i: int) -> str:
        """How to name sample ``i`` in a message: its file name, or its index."""
        return self.sample_names[i] if self.sample_names else f"#{i}"

    def batches(self, batch_size: int) -> Iterator[NDArray[np.float32]]:
        """The samples in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size]

    def head(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        return self.take(np.arange(min(n, len(self))))

    def take(self, indices: Sequence[int] | NDArray[np.integer[Any]]) -> Dataset:
        """The samples at ``indices``, in that order (labels, names and inputs with them)."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            x=self.x[idx],
            y=None if self.y is None else self.y[idx],
            source=self.source,
            sample_names=None if self.sample_names is None else [self.sample_names[i] for i in idx],
            class_names=self.class_names,
            inputs=None if self.inputs is None else {k: v[idx] for k, v in self.inputs.items()},
            drawn_from=self.drawn_from,
        )

    @property
    def samples_in_data(self) -> int:
        """How many samples the data file held (more than ``len`` for a drawn subset)."""
        return self.drawn_from if self.drawn_from is not None else len(self)


CALIBRATION_SEED = 0  # fixed, so a conversion picks the same calibration samples every time


def calibration_subset(ds: Dataset, n: int, seed: int = CALIBRATION_SEED) -> Dataset:
    """The calibration samples a conversion uses: all of ``ds`` when it holds at most ``n``,
    else ``n`` drawn at random (seeded: reproducible) and kept in file order.

    A random draw rather than the file's first ``n``: files are often sorted by class or
    start with warm-up or blank samples, and the head would then set every range. The
    subset's ``drawn_from`` records how many samples the data held.
    """
    if n < 1:
        raise ValueError(f"calibration samples must be at least 1, not {n}")
    if len(ds) <= n:
        return ds
    picked = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    subset = ds.take(picked)
    subset.drawn_from = len(ds)
    return subset


def load_named_inputs(path: str | Path, specs: Sequence[Any], role: str = "calibration") -> Dataset:
    """Load an ``.npz`` holding one array per model input (``specs``: name, dtype, shape).

    Integer inputs must hold integers and keep them; float inputs become float32. Every array
    needs the input's per-sample shape and the same number of samples. Raises
    :class:`DataError` naming the input at fault, e.g. one the file does not hold.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{role} data not found: {p}")
    names = [s.name for s in specs]
    if p.suffix != ".npz":
        raise DataError(
            f"{role} data {p}: this model takes inputs {', '.join(names)}; give an .npz "
            "holding one array per input name"
        )
    with _np_load(p, role) as npz:
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise DataError(
                f"{role} data {p}: no array for input {missing[0]!r} "
                f"(the model takes {', '.join(names)}; the file holds "
                f"{', '.join(sorted(npz.files)) or 'nothing'})"
            )
        arrays = {s.name: _input_array(npz[s.name], s, p, role) for s in specs}
        y = None
        if "y" in npz.files:
            y_raw = np.asarray(npz["y"])
            if y_raw.dtype.kind not in "iu" or y_raw.ndim != 1:
                raise DataError(f"{role} data {p}['y']: labels must be a 1-D integer array")
            y = y_raw.astype(np.int64)
        class_names = [str(s) for s in npz["labels"]] if "labels" in npz.files else None
    counts = {n: a.shape[0] for n, a in arrays.items()}
    if len(set(counts.values())) != 1:
        listed = ", ".join(f"{n} {c}" for n, c in counts.items())
        raise DataError(f"{role} data {p}: the inputs hold different numbers of samples ({listed})")
    first = next(iter(arrays.values()))
    ds = Dataset(
        x=first.astype(np.float32), y=y, source=str(p), class_names=class_names, inputs=arrays
    )
    if len(ds) == 0:
        raise DataError(f"{role} data {p} holds no samples")
    if y is not None and y.shape[0] != len(ds):
        raise DataError(f"{role} data {p}: {len(ds)} samples but {y.shape[0]} labels")
    for name, arr in arrays.items():
        if arr.dtype.kind == "f":
            _check_finite(Dataset(x=arr, y=None, source=f"{p}[{name!r}]"), role)
    return ds


def _input_array(raw: Any, spec: Any, p: Path, role: str) -> NDArray[Any]:
    """One input's array in the input's dtype, checked against its per-sample shape."""
    dtype = np.dtype(spec.dtype)
    arr = np.asarray(raw)
    where = f"{p}[{spec.name!r}]"
    if arr.dtype.kind not in "fiub" or arr.ndim == 0:
        raise DataError(f"{role} data {where}: expected an array of numbers, found {arr.dtype}")
    if dtype.kind in "iu" and arr.dtype.kind not in "iub":
        raise DataError(
            f"{role} data {where}: input {spec.name!r} takes {dtype.name}, the file holds "
            f"{arr.dtype.name} (save token ids and masks as integers)"
        )
    want = tuple(spec.shape[1:]) if spec.shape else ()
    if not _matches(arr.shape[1:], want):
        raise DataError(
            f"{role} data {where}: samples have shape {list(arr.shape[1:])}, input "
            f"{spec.name!r} expects {['?' if d == -1 else d for d in want]}"
        )
    return arr.astype(dtype, copy=False)


def load_dataset(
    path: str | Path, sample_shape: Sequence[int], role: str = "calibration"
) -> Dataset:
    """Load and check data for an input whose per-sample shape is ``sample_shape`` (-1: any).

    ``role`` ("calibration" or "validation") only words the messages. Raises
    :class:`DataError` for anything a converter must not be fed.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{role} data not found: {p}")
    if p.is_dir():
        ds = _load_folder(p, sample_shape, role)
    elif p.suffix == ".npy":
        ds = Dataset(x=_numeric(_np_load(p, role), p, role), y=None, source=str(p))
    elif p.suffix == ".npz":
        ds = _load_npz(p, role)
    else:
        raise DataError(
            f"{role} data {p}: unsupported format {p.suffix or '(none)'} "
            "(expected .npy, .npz, or a folder of images or .wav files)"
        )
    ds.x = _fit_shape(ds.x, sample_shape, p, role)
    if len(ds) == 0:
        raise DataError(f"{role} data {p} holds no samples")
    _check_finite(ds, role)
    if ds.y is not None and ds.y.shape[0] != len(ds):
        raise DataError(f"{role} data {p}: {len(ds)} samples but {ds.y.shape[0]} labels")
    return ds


def stored_sample_shape(path: str | Path, role: str = "calibration") -> tuple[int, ...]:
    """One sample's shape as stored in a ``.npy``/``.npz`` file (for models without shapes)."""
    p = Path(path)
    if not p.is_file() or p.suffix not in (".npy", ".npz"):
        raise DataError(
            f"{role} data {p}: a PyTorch source takes its input shape from a .npy or .npz "
            "file (inputs shaped as the module expects, batch first)"
        )
    if p.suffix == ".npy":
        x = _np_load(p, role)
    else:
        with _np_load(p, role) as npz:
            if "x" not in npz.files:
                raise DataError(f"{role} data {p}: no array 'x'")
            x = npz["x"]
    if np.ndim(x) < 2:
        raise DataError(f"{role} data {p}: expected a batch of samples, found shape {np.shape(x)}")
    return tuple(int(d) for d in np.shape(x)[1:])


def stored_named_samples(path: str | Path, role: str = "calibration") -> dict[str, Any] | None:
    """The first sample of every array in an ``.npz`` without ``x`` (one array per model input,
    dtypes kept), for a PyTorch module with named inputs; ``None`` for any other data file."""
    p = Path(path)
    if not p.is_file() or p.suffix != ".npz":
        return None
    with _np_load(p, role) as npz:
        if "x" in npz.files:
            return None
        arrays = {k: np.asarray(npz[k]) for k in npz.files if k not in ("y", "labels")}
    for k, a in arrays.items():
        if a.ndim < 2 or len(a) == 0:
            raise DataError(
                f"{role} data {p}[{k!r}]: expected a batch of samples, found shape {a.shape}"
            )
    return {k: a[:1] for k, a in arrays.items()} or None


def _np_load(p: Path, role: str) -> Any:
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{role} data {p}: cannot read ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _numeric(arr: Any, p: Path, role: str, key: str | None = None) -> NDArray[np.float32]:
    a = np.asarray(arr)
    where = f"{p}[{key!r}]" if key else str(p)
    if a.dtype.kind not in "fiub":
        raise DataError(f"{role} data {where}: expected numbers, found dtype {a.dtype}")
    if a.ndim == 0:
        raise DataError(f"{role} data {where}: expected an array of samples, found a scalar")
    return a.astype(np.float32, copy=False)


def _load_npz(p: Path, role: str) -> Dataset:
    with _np_load(p, role) as npz:
        keys = set(npz.files)
        if "x" not in keys:
            raise DataError(
                f"{role} data {p}: no array 'x' (found: {', '.join(sorted(keys)) or 'none'}); "
                "save inputs as x= and optional labels as y="
            )
        x = _numeric(npz["x"], p, role, "x")
        y = None
        if "y" in keys:
            y_raw = np.asarray(npz["y"])
            if y_raw.dtype.kind not in "iu" or y_raw.ndim != 1:
                raise DataError(f"{role} data {p}['y']: labels must be a 1-D integer array")
            y = y_raw.astype(np.int64)
        names = [str(s) for s in npz["labels"]] if "labels" in keys else None
    return Dataset(x=x, y=y, source=str(p), class_names=names)


def _load_folder(p: Path, sample_shape: Sequence[int], role: str) -> Dataset:
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    audio = [f for f in files if f.suffix.lower() in AUDIO_SUFFIXES]
    if images and audio:
        raise DataError(f"{role} data {p}: mixes images and WAV files; use one kind per folder")
    chosen = images or audio
    if not chosen:
        raise DataError(f"{role} data {p}: no images or .wav files found")
    # Class sub-folders (folder/cat/1.png) give labels, as in Keras' image_dataset_from_directory.
    parents = sorted({f.parent.relative_to(p).as_posix() for f in chosen})
    labelled = all(par != "." and "/" not in par for par in parents) and len(parents) > 1
    if images:
        layout = _image_layout(sample_shape, p, role)
        samples = [_load_image(f, layout, role) for f in chosen]
    else:
        samples = [_load_wav(f, sample_shape, role) for f in chosen]
    x = np.stack(samples).astype(np.float32)
    y = None
    class_names = None
    if labelled:
        class_names = parents
        index = {name: i for i, name in enumerate(class_names)}
        y = np.array([index[f.parent.relative_to(p).as_posix()] for f in chosen], dtype=np.int64)
    return Dataset(
        x=x,
        y=y,
        source=str(p),
        sample_names=[f.relative_to(p).as_posix() for f in chosen],
        class_names=class_names,
    )


@dataclass(frozen=True)
class _ImageLayout:
    """How a model input takes an image: its size, channel count and channel axis."""

    height: int
    width: int
    channels: int
    channels_first: bool


def _image_layout(sample_shape: Sequence[int], folder: Path, role: str) -> _ImageLayout:
    """The layout images must take for an input of per-sample shape ``sample_shape``.

    ``[H, W, C]`` (Keras, TFLite) with C 1 or 3 is channels-last; ``[C, H, W]`` (PyTorch, most
    ONNX) with C 1 or 3 and a last dimension that is not 1 or 3 is channels-first; an
    ambiguous shape such as ``[3, H, 3]`` stays channels-last.
    """
    shape = [int(d) for d in sample_shape]
    if len(shape) != 3:
        raise DataError(
            f"{role} data {folder}: images need a model input of shape [batch, height, width, "
            f"channels] or [batch, channels, height, width], this model takes {shape} per sample"
        )
    if shape[2] in (1, 3):
        layout = _ImageLayout(shape[0], shape[1], shape[2], channels_first=False)
    elif shape[0] in (1, 3):
        layout = _ImageLayout(shape[1], shape[2], shape[0], channels_first=True)
    else:
        raise DataError(
            f"{role} data {folder}: images give 1 (grey) or 3 (RGB) channels, this model takes "
            f"{shape} per sample (neither its first nor its last dimension is 1 or 3); pass the "
            "data as a .npy or .npz file instead"
        )
    if layout.height < 1 or layout.width < 1:
        axes = "channels, height, width" if layout.channels_first else "height, width, channels"
        raise DataError(
            f"{role} data {folder}: images need a model input with a fixed height and width "
            f"([batch, {axes}]), this model takes {['?' if d == -1 else d for d in shape]} "
            "per sample"
        )
    return layout


def _load_image(f: Path, layout: _ImageLayout, role: str) -> NDArray[np.float32]:
    from PIL import Image, UnidentifiedImageError

    h, w, c = layout.height, layout.width, layout.channels
    try:
        with Image.open(f) as img:
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{role} sample {f}: cannot read image ({_first_line(exc)})") from exc
    arr = arr.reshape(h, w, c)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)) if layout.channels_first else arr


def _load_wav(f: Path, sample_shape: Sequence[int], role: str) -> NDArray[np.float32]:
    try:
        with wave.open(str(f), "rb") as w:
            width, channels = w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise DataError(f"{role} sample {f.name}: cannot read WAV ({_first_line(exc)})") from exc
    if width != 2:
        raise DataError(f"{role} sample {f.name}: only 16-bit PCM WAV is supported")
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    pcm = pcm.reshape(-1, channels).mean(axis=1)
    if any(d == -1 for d in sample_shape):
        raise DataError(
            f"{role} data: WAV samples need a fixed input length, not {list(sample_shape)}"
        )
    n = int(np.prod(sample_shape))
    pcm = np.pad(pcm[:n], (0, max(0, n - pcm.size)))
    return pcm.reshape(tuple(sample_shape))


def _fit_shape(
    x: NDArray[np.float32], sample_shape: Sequence[int], p: Path, role: str
) -> NDArray[np.float32]:
    want = tuple(sample_shape)
    got = x.shape[1:]
    if _matches(got, want):
        return x
    # A missing trailing channel axis of 1 (digits as (N, 8, 8) for an (8, 8, 1) input) is
    # unambiguous; anything else is the user's to fix.
    if want and want[-1] == 1 and _matches((*got, 1), want):
        return x[..., None]
    raise DataError(
        f"{role} data {p}: samples have shape {list(got)}, the model input expects "
        f"{['?' if d == -1 else d for d in want]}"
    )


def _matches(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(got) == len(want) and all(w in (-1, g) for g, w in zip(got, want, strict=True))


def _check_finite(ds: Dataset, role: str) -> None:
    flat = ds.x.reshape(len(ds), -1)
    bad_rows = ~np.all(np.isfinite(flat), axis=1)
    if bad_rows.any():
        i = int(np.argmax(bad_rows))
        kind = "NaN" if np.isnan(flat[i]).any() else "Inf"
        more = int(bad_rows.sum()) - 1
        raise DataError(
            f"{role} sample {ds.sample_name(i)} of {ds.source} contains {kind}"
            + (f" (and {more} more samples contain NaN/Inf)" if more else "")
        )
