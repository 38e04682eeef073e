"""What the agent knows of the collector's open drift alerts on its own model versions.

:class:`DriftState` takes the retained :class:`~edgedl.drift_notice.DriftNotice` the collector
keeps on ``edgedl/v1/{fleet}/{device}/drift`` (the telemetry connection subscribes to it) and
answers :meth:`DriftState.is_open` on the serving path. A version counts as drifting from the
notice that lists it until a notice without it arrives, or until the notice's ``ttl_s`` has
passed on this device's clock since it arrived without a fresh one: a collector that stopped,
or a broker this device cannot reach for that long, ends drift sampling rather than leaving
it on forever. The collector refreshes the notice every ``ttl_s / 3`` seconds while an alert
is open, so a reachable collector keeps it current.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgedl.drift_notice import decode_notice
from edgedl.errors import TelemetryError

log = logging.getLogger("edgedl.agent.drift_state")


class DriftState:
    """The model versions of this device with an open drift alert (see the module docstring)."""

    def __init__(self, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self._clock = clock
        self._drifting: frozenset[tuple[str, str]] = frozenset()
        self._until = 0.0
        self._lock = threading.Lock()
        self.notices = 0
        """Notices received."""

    def on_notice(self, payload: bytes) -> None:
        """A notice from the broker (an empty retained message clears the state)."""
        if not payload:
            self.update(frozenset(), 0.0)
            return
        try:
            notice = decode_notice(payload)
        except TelemetryError as exc:
            log.warning("ignoring a drift notice: %s", exc)
            return
        if notice.device != self.device:
            return
        self.notices += 1
        drifting = frozenset((v.model, v.version) for v in notice.drifting)
        if drifting != self._drifting:
            shown = ", ".join(f"{m} {v}" for m, v in sorted(drifting)) or "none"
            log.info("drift notice: model versions with an open drift alert: %s", shown)
        self.update(drifting, notice.ttl_s)

    def update(self, drifting: frozenset[tuple[str, str]], ttl_s: float) -> None:
        """Set the drifting versions, valid for ``ttl_s`` seconds from now."""
        with self._lock:
            self._drifting = drifting
            self._until = self._clock() + ttl_s

    def is_open(self, model: str, version: str) -> bool:
        """Whether ``model`` ``version`` has an open drift alert, as last heard in time."""
        drifting = self._drifting
        if not drifting or (model, version) not in drifting:
            return False
        return self._clock() < self._until


__all__ = ["DriftState"]
