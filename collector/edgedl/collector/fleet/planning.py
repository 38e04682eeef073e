"""Plan a rollout: which devices (a selector), in which waves, from which previous version."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence

from edgedl.errors import FleetError


def select_devices(known: Iterable[str], selector: str | Sequence[str] | None) -> list[str]:
    """The device ids a selector names, sorted.

    ``None`` or ``"*"``: every known device; a list or ``"a,b,c"``: those devices (each must
    be known); a pattern with ``*``, ``?`` or ``[``: the known devices it matches.
    """
    ids = sorted(set(known))
    if selector is None or selector == "*" or selector == "":
        chosen = ids
    else:
        items = (
            [s.strip() for s in selector.split(",") if s.strip()]
            if isinstance(selector, str)
            else list(selector)
        )
        chosen = []
        for item in items:
            if any(c in item for c in "*?["):
                chosen.extend(fnmatch.filter(ids, item))
            elif item in ids:
                chosen.append(item)
            else:
                raise FleetError(f"unknown device {item!r} (known: {', '.join(ids) or 'none'})")
        chosen = sorted(set(chosen))
    if not chosen:
        raise FleetError(f"no device matches {selector!r} (known: {', '.join(ids) or 'none'})")
    return chosen


def parse_waves(spec: str | Sequence[str | int | float]) -> list[str]:
    """``"1,10%,100%"`` -> ``["1", "10%", "100%"]`` (checked: counts >= 1, shares in (0, 100])."""
    items = (
        [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
    )
    if not items or any(not s for s in items):
        raise FleetError(f"invalid waves {spec!r}: give counts or shares, e.g. 1,10%,100%")
    for item in items:
        try:
            value = float(item[:-1]) if item.endswith("%") else int(item)
        except ValueError:
            raise FleetError(
                f"invalid wave {item!r}: a device count (1) or a share (10%)"
            ) from None
        if (item.endswith("%") and not 0 < value <= 100) or (not item.endswith("%") and value < 1):
            raise FleetError(f"invalid wave {item!r}: counts from 1, shares in (0, 100]%")
    return items


def wave_sizes(waves: Sequence[str], devices: int) -> list[int]:
    """Cumulative device counts per wave; the last wave always takes every device.

    A wave that would add no device is dropped (``1,10%,100%`` of 5 devices is 1, 5).
    """
    sizes: list[int] = []
    for item in waves:
        n = math.ceil(float(item[:-1]) / 100 * devices) if item.endswith("%") else int(item)
        n = max(1, min(devices, n))
        if not sizes or n > sizes[-1]:
            sizes.append(n)
    if sizes[-1] != devices:
        sizes.append(devices)
    return sizes
