"""``edgedl agent batch``: run a bundle over files of inputs and write predictions as JSON lines.

Inputs: a ``.npy`` file (an array of samples, batch first, or a single sample), a ``.npz``
file (one array per model input, named after it, or a single array for a one-input model;
an array named ``y`` or ``labels`` is ignored), or a folder of such files, read in name
order. Each output line is one sample::

    {"source": "a.npz", "index": 0, "outputs": {"output_0": [...]},
     "label": "7", "class": 7, "confidence": 0.98}

``label``/``class``/``confidence`` appear for classification outputs (2-D, several classes).
The agent does not import the converters, so this reader is its own (NumPy only).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import numpy as np
from numpy.typing import NDArray

from edgedl.bundle import Bundle, Manifest
from edgedl.errors import DataError, ServingError, UsageError

from .config import ModelConfig
from .served import Observers, ServedModel

Array = NDArray[Any]
SUFFIXES = (".npy", ".npz")
IGNORED_ARRAYS = ("y", "labels", "label")


def input_files(path: Path) -> list[Path]:
    """The input files at ``path`` (a file, or the .npy/.npz files of a folder, sorted)."""
    if not path.exists():
        raise DataError(f"input not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{path} holds no .npy or .npz files")
        return files
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: expected a .npy or .npz file (or a folder of them)")
    return [path]


def read_inputs(path: Path, manifest: Manifest) -> dict[str, Array]:
    """The model inputs in one file, each with the batch on the first axis."""
    try:
        if path.suffix == ".npy":
            arrays = {manifest.inputs[0].name: np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files if k not in IGNORED_ARRAYS}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc
    names = [s.name for s in manifest.inputs]
    if len(names) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(
            f"{path}: no array for input {missing[0]!r} (found: {', '.join(sorted(arrays)) or 'none'})"
        )
    out: dict[str, Array] = {}
    for spec in manifest.inputs:
        arr = arrays[spec.name]
        if arr.dtype.kind not in "fiu":
            raise DataError(f"{path}: array {spec.name!r} holds {arr.dtype}, not numbers")
        if arr.ndim == len(spec.shape) - 1:  # one sample without its batch axis
            arr = arr[None]
        out[spec.name] = arr.astype(np.float32, copy=False)
    return out


def _chunks(inputs: dict[str, Array], size: int) -> Iterator[tuple[int, dict[str, Array]]]:
    n = next(iter(inputs.values())).shape[0]
    for start in range(0, n, size):
        yield start, {k: v[start : start + size] for k, v in inputs.items()}


def predict_files(
    served: ServedModel, files: list[Path], out: IO[str], batch_size: int, progress: bool
) -> int:
    """Run every sample of ``files`` and write one JSON line each; return the sample count."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    labels = served.manifest.labels
    loaded = [(f, read_inputs(f, served.manifest)) for f in files]
    total = sum(next(iter(x.values())).shape[0] for _, x in loaded)
    written = 0
    with Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("predict", total=total)
        for path, inputs in loaded:
            for start, chunk in _chunks(inputs, batch_size):
                try:
                    outputs = served.infer(chunk)
                except ServingError as exc:
                    raise DataError(f"{path.name} (samples from {start}): {exc}") from exc
                n = next(iter(chunk.values())).shape[0]
                for i in range(n):
                    out.write(json.dumps(_line(path.name, start + i, outputs, i, labels)) + "\n")
                written += n
                bar.advance(task, n)
    return written


def _line(
    source: str, index: int, outputs: dict[str, Array], i: int, labels: list[str] | None
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "source": source,
        "index": index,
        "outputs": {k: v[i].tolist() for k, v in outputs.items()},
    }
    first = next(iter(outputs.values()))
    if first.ndim == 2 and first.shape[1] >= 2:
        row = first[i].astype(np.float64)
        cls = int(np.argmax(row))
        is_dist = bool(np.all(row >= 0) and abs(row.sum() - 1.0) < 1e-2)
        probs = row if is_dist else np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        line["class"] = cls
        line["confidence"] = round(float(probs[cls]), 6)
        if labels and cls < len(labels):
            line["label"] = labels[cls]
    return line


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(), help="Bundle to run.")
@click.option(
    "--input", "input_path", required=True, type=click.Path(), help=".npy/.npz or folder."
)
@click.option("--output", "output_path", required=True, type=click.Path(dir_okay=False))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", default=None, type=click.IntRange(min=0), help="Interpreter threads.")
@click.option("--progress/--no-progress", default=None, help="Default: on when stderr is a TTY.")
def batch(
    model_path: str,
    input_path: str,
    output_path: str,
    batch_size: int,
    threads: int | None,
    progress: bool | None,
) -> None:
    """Predict a file or folder of inputs offline; write one JSON line per sample."""
    bundle = Bundle.open(model_path)
    files = input_files(Path(input_path))
    config = ModelConfig(
        path=str(bundle.path), max_batch_size=batch_size, threads=threads, timeout_ms=3_600_000
    )
    served = ServedModel(bundle, config, Observers())
    served.start()
    target = Path(output_path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as out:
            show = sys.stderr.isatty() if progress is None else progress
            count = predict_files(served, files, out, batch_size, show)
        tmp.replace(target)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        served.stop()
    click.echo(f"wrote {count} predictions from {len(files)} file(s) to {target}", err=True)
