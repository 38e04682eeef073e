"""PyTorch sources: a TorchScript file, a ``torch.export`` file, or a factory plus a state dict.

A PyTorch module carries no input shape, so it is taken from the calibration (or validation)
data: the module is exported to ONNX with that per-sample shape and a dynamic batch axis, and
every ONNX target then starts from that file. The module itself stays the reference that
validation compares the artifact with, so an exporter that changes the outputs shows in the
report. ``torch`` is imported only when a PyTorch source is converted.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import ConversionError, DataError, ModelError

TORCH_SUFFIXES = {".pt", ".pth", ".pt2"}
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
INPUT_NAME = "input"
TORCHSCRIPT_TFLITE = (
    "a TorchScript file converts to ONNX targets only (litert-torch traces with torch.export, "
    "which cannot read TorchScript); for tflite-* give the module as a torch.export .pt2 or "
    "package.module:factory (docs/converting.md)"
)
_INSTALL_HINT = (
    "PyTorch sources need torch: pip install 'edgedl[torch]' "
    "(a CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"
)


def is_factory(spec: str) -> bool:
    """Whether ``spec`` reads as ``package.module:factory`` (and is not a file)."""
    return bool(_FACTORY.match(spec)) and not Path(spec).exists()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ModelError(_INSTALL_HINT) from exc
    return torch


@dataclass
class TorchModule:
    """A loaded PyTorch module in eval mode, and how it was given."""

    module: Any
    form: str  # "torchscript", "torch.export", "factory"
    exported_program: Any = None
    warnings: list[str] = field(default_factory=list)

    def run(self, x: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        """The module's outputs for one float batch, as float32 arrays in order."""
        torch = _import_torch()
        with torch.no_grad():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return [np.asarray(t.detach().numpy(), dtype=np.float32) for t in _flatten(out)]

    def run_named(self, feeds: Mapping[str, NDArray[Any]]) -> list[NDArray[np.float32]]:
        """The module's outputs for one batch of named inputs (passed in ``feeds``' order,
        dtypes kept), as float32 arrays in order."""
        torch = _import_torch()
        args = [torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()]
        with torch.no_grad():
            out = self.module(*args)
        return [np.asarray(t.detach().numpy(), dtype=np.float32) for t in _flatten(out)]


def input_order(model: TorchModule, names: Sequence[str]) -> list[str]:
    """The data's input ``names`` in the order of the module's ``forward`` parameters (the
    data's own order when ``forward`` does not name them); :class:`ModelError` for a name
    ``forward`` does not take, or a required parameter the data does not hold."""
    try:
        params = inspect.signature(model.module.forward).parameters.values()
    except (TypeError, ValueError):
        return list(names)
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not named:
        return list(names)
    unknown = [n for n in names if n not in {p.name for p in named}]
    if unknown:
        raise ModelError(
            f"the data holds an array {unknown[0]!r} but the module's forward takes "
            f"{', '.join(p.name for p in named)}: give one array per forward parameter, by "
            "name, or a single input as 'x'"
        )
    missing = [p.name for p in named if p.name not in names and p.default is p.empty]
    if missing:
        raise ModelError(
            f"the module's forward takes {', '.join(p.name for p in named)}; the data holds "
            f"no array {missing[0]!r}"
        )
    return [p.name for p in named if p.name in names]


def _flatten(out: Any) -> Iterator[Any]:
    if isinstance(out, Mapping):
        for v in out.values():
            yield from _flatten(v)
    elif isinstance(out, list | tuple):
        for v in out:
            yield from _flatten(v)
    else:
        yield out


def load_module(spec: str, state_dict: Path | None) -> TorchModule:
    """Load a PyTorch model from a ``.pt``/``.pth``/``.pt2`` file or a ``module:factory`` spec.

    Raises :class:`ModelError` with one line for a file that is not a model, a factory that
    cannot be imported or called, and a state dict that does not fit the factory's module.
    """
    torch = _import_torch()
    path = Path(spec)
    if is_factory(spec):
        return _from_factory(torch, spec, state_dict)
    if state_dict is not None:
        raise ModelError("--state-dict goes with a package.module:factory model, not a file")
    if not path.is_file():
        raise ModelError(f"model not found: {path}")
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a PyTorch model: TorchScript and torch.export files are zip archives"
        )
    layout = archive_kind(path)
    if layout == "pickle":
        loaded = _weights_only(torch, path)
        if isinstance(loaded, Mapping):
            raise ModelError(
                f"{path} holds only weights (a state dict): give the module as "
                f"package.module:factory --state-dict {path.name}"
            )
        if loaded is not None:
            raise ModelError(
                f"{path.name} holds a pickled {type(loaded).__name__} (torch.save), not a model: "
                "give a TorchScript or torch.export file, or package.module:factory"
            )
        raise ModelError(
            f"{path.name} holds a pickled nn.Module (torch.save(model)), which edgedl does not "
            "unpickle: save it with torch.jit.save(torch.jit.script(model)) or "
            "torch.export.save(...), or give its factory as package.module:factory with "
            "--state-dict"
        )
    # The archive's layout, not its name, says what it is: a renamed file loads as what it is.
    if layout == "torch.export" or (layout is None and path.suffix.lower() == ".pt2"):
        try:
            with _quiet(Path(os.devnull)):  # torch logs a traceback before it raises
                program = torch.export.load(str(path))
        except Exception as exc:
            raise ModelError(f"cannot read torch.export file {path}: {_first_line(exc)}") from exc
        return TorchModule(program.module(), "torch.export", exported_program=program)
    try:
        with _quiet(Path(os.devnull)):
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ModelError(f"cannot read TorchScript file {path}: {_first_line(exc)}") from exc
    return TorchModule(module.eval(), "torchscript")


def archive_kind(path: Path) -> str | None:
    """What a PyTorch zip archive holds, from its layout: ``"torchscript"`` (``constants.pkl``
    and ``code/``), ``"torch.export"`` (``archive_format``, or ``models/`` and no pickle), or
    ``"pickle"`` (``torch.save``: ``data.pkl`` only, a state dict or a whole module); None
    for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.split("/", 1)[1] for n in archive.namelist() if "/" in n}
    except (OSError, zipfile.BadZipFile):
        return None
    if "constants.pkl" in names and any(n.startswith("code/") for n in names):
        return "torchscript"
    if "archive_format" in names or (
        any(n.startswith("models/") for n in names) and "data.pkl" not in names
    ):
        return "torch.export"
    if "data.pkl" in names:
        return "pickle"
    return None


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript file (by its archive layout, whatever its name)."""
    return path.is_file() and archive_kind(path) == "torchscript"


_ARCHIVE_NAMES = {"torchscript": "a TorchScript model", "torch.export": "a torch.export archive"}


def _weights_only(torch: Any, path: Path) -> Any:
    """What ``torch.load(weights_only=True)`` reads from ``path`` (tensors in containers);
    None when it refuses (a pickled module or other code)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        return None


def _from_factory(torch: Any, spec: str, state_dict: Path | None) -> TorchModule:
    module_name, attr = spec.split(":")
    # Like uvicorn's --app-dir default: a factory in the current directory is importable.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(
            f"cannot import {module_name!r} for factory {spec!r}: {_first_line(exc)}"
        ) from exc
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} (factory {spec!r})")
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"factory {spec!r} failed: {_first_line(exc)}") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelError(
            f"factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    notes = []
    if state_dict is None:
        note = _random_weights_note(torch, factory, module, spec)
        if note:
            notes.append(note)
    else:
        _load_state_dict(torch, module, state_dict, spec)
    return TorchModule(module.eval(), "factory", warnings=notes)


def _random_weights_note(torch: Any, factory: Any, module: Any, spec: str) -> str | None:
    """A warning when ``factory`` makes random weights: a second call's weights differ from
    ``module``'s. None when they are the same (the factory loads, or seeds, its weights)."""
    hedge = (
        f"no --state-dict: converted the weights {spec} creates itself "
        "(random unless the factory loads them)"
    )
    try:
        again = factory()
        first, second = module.state_dict(), again.state_dict()
    except Exception:
        return hedge
    same = first.keys() == second.keys() and all(
        not isinstance(v, torch.Tensor) or (
            v.shape == second[k].shape and v.dtype == second[k].dtype
            and torch.equal(v, second[k])
        )
        for k, v in first.items()
    )  # fmt: skip
    if same:
        return None
    return (
        f"the converted model has random weights: {spec} creates new ones on every call and "
        "no --state-dict was given (give --state-dict FILE, or a factory that loads its weights)"
    )


def _load_state_dict(torch: Any, module: Any, path: Path, spec: str) -> None:
    if not path.is_file():
        raise ModelError(f"state dict not found: {path}")
    layout = archive_kind(path)
    if layout in _ARCHIVE_NAMES:
        raise ModelError(
            f"{path.name} is {_ARCHIVE_NAMES[layout]}, not a state dict: give it as MODEL "
            "(without --state-dict)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if layout == "pickle":  # weights_only refuses anything but tensors and containers
            raise ModelError(
                f"{path.name} holds a pickled object (torch.save(model)?), not a state dict: "
                "save model.state_dict() instead"
            ) from exc
        raise ModelError(f"cannot read state dict {path}: {_first_line(exc)}") from exc
    if isinstance(weights, Mapping) and isinstance(weights.get("state_dict"), Mapping):
        weights = weights["state_dict"]  # a training checkpoint: {"state_dict": ..., ...}
    if not isinstance(weights, Mapping):
        raise ModelError(f"{path} is not a state dict (found {type(weights).__name__})")
    try:
        module.load_state_dict(weights, strict=True)
    except Exception as exc:
        # torch lists every mismatch on its own line after a heading; the first one is enough.
        details = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        detail = details[0] if details else _first_line(exc)
        raise ModelError(f"state dict {path.name} does not fit {spec}: {detail[:300]}") from exc


@contextlib.contextmanager
def _quiet(log: Path | None = None, also: Sequence[str] = ()) -> Iterator[None]:
    """Keep the exporters' progress lines and warnings off the user's terminal. With ``log``,
    everything written to file descriptor 2 meanwhile (torch's own log lines, its C++ logs,
    the graphs ``torch.export`` prints when it cannot trace) goes to that file instead.
    ``also`` names more loggers to hold at ERROR meanwhile."""
    names = (
        "torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes",
        *also,
    )  # fmt: skip
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    saved = None
    try:
        with contextlib.ExitStack() as stack:
            sys.stderr.flush()
            stack.enter_context(warnings.catch_warnings())
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
            warnings.simplefilter("ignore")
            if log is not None:
                sink = stack.enter_context(open(log, "ab"))
                saved = os.dup(2)
                os.dup2(sink.fileno(), 2)
            yield
    finally:
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check_fits(model: TorchModule, example: Sequence[Any], data: str | None) -> None:
    """Run ``model`` once, eagerly, on ``example`` (a batch shaped as the data's samples);
    :class:`DataError` naming ``data`` and the module's complaint when it does not take it."""
    torch = _import_torch()
    # A torch.export program may take one batch size only (the one it was traced at): it
    # fits when it takes one sample or two.
    tries = [example] if model.exported_program is None else [[t[:1] for t in example], example]
    failures: list[Exception] = []
    for batch in tries:
        try:
            with _quiet(), torch.no_grad():
                model.module(*batch)
            return
        except Exception as exc:
            failures.append(exc)
    shapes = ", ".join(str(list(t.shape[1:])) for t in example)
    shape = list(example[0].shape[1:]) if len(example) == 1 else []
    hint = ""
    if len(shape) == 3 and shape[-1] <= 4 < shape[0]:
        hint = "; PyTorch models usually take channels first (N, C, H, W)"
    raise DataError(
        f"{data or 'the data'}: samples of shape {shapes} do not fit the module "
        f"({_first_line(failures[0])[:200]}){hint}"
    ) from failures[0]


def export_onnx(
    model: TorchModule,
    sample_shape: Sequence[int],
    out: Path,
    opset: int = 18,
    samples: Mapping[str, NDArray[Any]] | None = None,
    data: str | None = None,
) -> tuple[str, list[str]]:
    """Export ``model`` to ONNX at ``out`` with a dynamic batch axis; return (exporter, notes).

    The file is self-contained (weights inside, no external data file), so it can be copied.
    With ``samples`` (one sample per input name, in the module's order, dtypes kept) the
    module takes those named inputs instead of one float ``input`` of ``sample_shape``.

    ``torch.export`` (``dynamo=True``) first; when it cannot trace the module, the TorchScript
    exporter, with a note saying why. :class:`ConversionError` when neither can. The module
    first runs once on the example, so data shaped wrong is a :class:`DataError` naming
    ``data`` (the data file, as the user gave it). What the exporters print goes to
    ``torch-export.log`` beside ``out``.
    """
    torch = _import_torch()
    if samples:
        example = tuple(torch.from_numpy(np.repeat(v, 2, axis=0)) for v in samples.values())
    else:
        example = (torch.zeros((2, *sample_shape), dtype=torch.float32),)
    input_names = list(samples) if samples else [INPUT_NAME]
    names = {"input_names": input_names}
    check_fits(model, example, data)
    log = out.parent / "torch-export.log"
    notes: list[str] = []
    if model.form != "torchscript":
        target = model.exported_program if model.exported_program is not None else model.module
        batch = (
            None
            if model.exported_program is not None
            else tuple({0: torch.export.Dim.AUTO} for _ in example)
        )
        try:
            with _quiet(log):
                torch.onnx.export(
                    target, example, str(out), dynamo=True, dynamic_shapes=batch,
                    opset_version=opset, external_data=False, **names,
                )  # fmt: skip
            return "torch.export (dynamo)", notes
        except Exception as exc:
            if model.exported_program is not None:
                raise ConversionError(
                    f"torch.onnx.export could not export {model.form} program: {_first_line(exc)}"
                ) from exc
            notes.append(
                f"torch.export could not trace the module ({_first_line(exc)}); "
                "exported with the TorchScript exporter instead"
            )
    try:
        with _quiet(log):
            torch.onnx.export(
                model.module, example, str(out), dynamo=False, opset_version=opset,
                dynamic_axes={n: {0: "batch"} for n in input_names}, **names,
            )  # fmt: skip
    except Exception as exc:
        raise ConversionError(
            f"torch.onnx.export could not export the module: {_first_line(exc)}"
        ) from exc
    return "torchscript", notes
