"""Figures a window carries besides the models: the device's load and the pipelines' stages."""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgedl.telemetry import MAX_NAME, MAX_PIPELINE_FIGURES, SystemFigures

_THERMAL = Path("/sys/class/thermal")
_MAX_DEPTH = 4  # pipeline / stage / figure / field


@lru_cache(maxsize=1)
def _process() -> Any:
    import psutil

    proc = psutil.Process()
    proc.cpu_percent(None)  # the first reading is meaningless: start the clock here
    return proc


def system_figures() -> SystemFigures:
    """This process's CPU share since the last call, its memory, and the device temperature."""
    import psutil

    proc = _process()
    with proc.oneshot():
        cpu = float(proc.cpu_percent(None))
        rss = int(proc.memory_info().rss)
    return SystemFigures(
        cpu_percent=max(cpu, 0.0),
        memory_rss_bytes=rss,
        memory_percent=float(psutil.virtual_memory().percent),
        temperature_c=temperature_c(),
    )


def temperature_c(root: Path = _THERMAL) -> float | None:
    """The hottest thermal zone in °C, or None where the device exposes none (VMs, containers)."""
    hottest: float | None = None
    try:
        zones = sorted(root.glob("thermal_zone*/temp"))
    except OSError:
        return None
    for path in zones:
        try:
            value = int(path.read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        if -273.15 <= value <= 1000.0 and (hottest is None or value > hottest):
            hottest = value
    return hottest


def pipeline_figures(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Pipelines' ``stats()`` fitted to the contract: finite numbers only, at most 4 levels.

    Text (units, names) is left out; a level deeper than the fourth is folded into the fourth
    with dotted keys (``buckets.0.5``); past 2048 figures the rest is left out.
    """
    budget = [MAX_PIPELINE_FIGURES]
    out: dict[str, Any] = {}
    for name, value in stats.items():
        if isinstance(value, Mapping) and budget[0] > 0:
            budget[0] -= 1  # the contract counts every key, names of nested objects too
            fitted = _fit(value, 2, budget)
            if fitted:
                out[str(name)[:MAX_NAME]] = fitted
    return out


def _fit(value: Mapping[str, Any], depth: int, budget: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = str(key)[:MAX_NAME]
        if not name:
            continue
        if isinstance(item, Mapping):
            if depth < _MAX_DEPTH:
                if budget[0] <= 0:
                    continue
                budget[0] -= 1
                nested = _fit(item, depth + 1, budget)
                if nested:
                    out[name] = nested
            else:
                for sub, number in _flatten(item, name):
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                    out[sub[-MAX_NAME:]] = number
        elif _is_number(item) and budget[0] > 0:
            budget[0] -= 1
            out[name] = item
    return out


def _flatten(value: Mapping[str, Any], prefix: str) -> list[tuple[str, float | int]]:
    items: list[tuple[str, float | int]] = []
    for key, item in value.items():
        path = f"{prefix}.{key}"
        if isinstance(item, Mapping):
            items.extend(_flatten(item, path))
        elif _is_number(item):
            items.append((path, item))
    return items


def _is_number(item: Any) -> bool:
    if isinstance(item, bool) or not isinstance(item, (int, float)):
        return False
    return math.isfinite(item) and abs(item) <= 1e300
