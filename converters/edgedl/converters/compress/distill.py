"""Knowledge distillation: the student a smaller copy of the teacher, or the user's model.

:func:`narrower` scales every hidden Conv2D and Dense layer of the teacher's chain by a width
multiplier, with freshly initialised weights; a student given as ``package.module:factory``
is any Keras model with the teacher's input and output shapes. Training itself
(:mod:`.training`) mixes the labels' cross-entropy with the cross-entropy against the
teacher's outputs softened by a temperature.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from edgedl.errors import ModelError, UsageError

from .chain import Chain, Link, parametric


def narrower(teacher: Chain, width: float) -> Chain:
    """The teacher's architecture with ``width`` times the filters/units, untrained."""
    if not 0.0 < width <= 1.0:
        raise UsageError(f"--width must be in (0, 1], not {width}")
    output_layer = parametric(teacher)[-1]
    links: list[Link] = []
    for i, link in enumerate(teacher.links):
        key = {"Conv2D": "filters", "Dense": "units"}.get(link.kind)
        if key is not None and i != output_layer:
            size = max(1, math.ceil(int(link.config[key]) * width))
            links.append(link.with_config(**{key: size}))
        else:
            links.append(link.with_config())
    out = teacher.copy()
    out.links = links
    out.name = f"{teacher.name}_student"
    return out


def student_from_factory(spec: str, teacher: Any) -> Any:
    """Call ``package.module:factory`` and check its model fits the teacher's input/output."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for --student: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r} for --student")
    student = factory()
    for what in ("input", "output"):
        want = tuple(getattr(teacher, f"{what}_shape")[1:])
        got = tuple(getattr(student, f"{what}_shape", (None,))[1:])
        if got != want:
            raise ModelError(
                f"the student from {spec} has {what} shape {list(got)}, the teacher "
                f"{list(want)}: they must match"
            )
    return student
