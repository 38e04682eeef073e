"""The registry of conversion targets.

Each target is a small function registered by name with :func:`register`, so ``--target``
validation, ``edgedl targets`` and the docs all read one list. The target modules
(:mod:`.to_tflite`, :mod:`.to_onnx`) register themselves when ``edgedl.converters`` is
imported; none of them imports TensorFlow until a conversion runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgedl.errors import UsageError

from .data import Dataset
from .sources import SourceModel

Family = Literal["tflite", "onnx"]


@dataclass
class BuildContext:
    """What a target's build function gets."""

    source: SourceModel
    calibration: Dataset | None
    workdir: Path
    io_dtype: str = "int8"
    calibration_samples: int = 500
    advance: Callable[[int], None] = lambda n: None
    float_nodes: tuple[str, ...] = ()  # layers an int8 target keeps in float, by node name
    # Where ONNX Runtime's calibration ranges are kept between builds of one exported model,
    # so that rebuilding it with other float_nodes does not calibrate again.
    calibration_cache: Path | None = None
    measure_layers: bool = True  # rank the quantized layers by their error (onnx-int8)


@dataclass
class BuildResult:
    """What a target's build function returns: the artifact and how it was made."""

    model_path: Path
    calibration: dict[str, Any] | None = None
    path: str | None = None  # the tools it went through, when a source has several routes
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """One conversion target: a name, the runtime that runs it, and its build function."""

    name: str
    family: Family
    runtime: Literal["litert", "onnxruntime"]
    description: str
    needs_calibration: bool
    build: Callable[[BuildContext], BuildResult]

    def accepts(self, source_kind: str) -> bool:
        """Whether a source of this kind can go to this target."""
        return self.family == "onnx" or source_kind in ("keras", "saved_model", "torch")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for ``edgedl targets --json``)."""
        return {
            "name": self.name,
            "family": self.family,
            "runtime": self.runtime,
            "description": self.description,
            "needs_calibration": self.needs_calibration,
            "sources": ["keras", "saved_model", "onnx", "torch"]
            if self.family == "onnx"
            else ["keras", "saved_model", "torch"],
        }


TARGETS: dict[str, Target] = {}


def register(
    name: str, family: Family, description: str, needs_calibration: bool = False
) -> Callable[[Callable[[BuildContext], BuildResult]], Callable[[BuildContext], BuildResult]]:
    """Register a build function as target ``name``."""

    def deco(fn: Callable[[BuildContext], BuildResult]) -> Callable[[BuildContext], BuildResult]:
        runtime: Literal["litert", "onnxruntime"] = (
            "litert" if family == "tflite" else "onnxruntime"
        )
        TARGETS[name] = Target(name, family, runtime, description, needs_calibration, fn)
        return fn

    return deco


def get_target(name: str) -> Target:
    """The target called ``name``; :class:`UsageError` listing the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r} (known: {', '.join(TARGETS)})") from None
