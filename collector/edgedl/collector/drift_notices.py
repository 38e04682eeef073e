"""Drift notices: the collector retains, per device, which model versions drift now.

:class:`DriftNotices` publishes a :class:`~edgedl.drift_notice.DriftNotice` (retained, QoS 1)
on ``edgedl/v1/{fleet}/{device}/drift`` whenever a device-scope drift alert of that device
opens or resolves (an :class:`~edgedl.collector.alerts.AlertBook` change), and again every
``ttl_s / 3`` seconds for every device with an open one, so that agents can tell a notice
that is still meant from one a stopped collector left behind. Agents with ``[sampling]
during_drift_rate`` sample more while their version is listed. Fleet-scope drift alerts are
not sent: a notice is about the device's own data.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgedl.drift_notice import DriftingVersion, DriftNotice, drift_topic, encode_notice

from .store import Store

log = logging.getLogger("edgedl.collector.drift_notices")

#: publish(topic, payload, retain)
RetainedPublish = Callable[[str, bytes, bool], None]


class DriftNotices:
    """Keeps each device's retained drift notice current; :meth:`start`/:meth:`stop`."""

    def __init__(self, store: Store, publish: RetainedPublish, ttl_s: float = 600.0) -> None:
        self._store = store
        self._publish = publish
        self.ttl_s = ttl_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def on_alert(self, alert: dict[str, Any]) -> None:
        """An alert opened or resolved: a device-scope drift alert renews its device's notice."""
        if (
            alert.get("kind") != "drift"
            or alert.get("scope") != "device"
            or not alert.get("device")
        ):
            return
        self.publish(alert["fleet"], alert["device"])

    def publish(self, fleet: str, device: str, now: float | None = None) -> None:
        """Publish the device's notice now: each model version with an open device-scope drift
        alert (on any statistic) once, with the time its first one opened."""
        first: dict[tuple[str, str], float] = {}
        for a in self._open(fleet):
            if a["device"] == device:
                key = (a["model"], a["version"])
                first[key] = min(first.get(key, a["opened_at"]), a["opened_at"])
        drifting = [
            DriftingVersion(model=m, version=v, opened_at=at)
            for (m, v), at in sorted(first.items())
        ]
        notice = DriftNotice(
            fleet=fleet, device=device, time=time.time() if now is None else now,
            ttl_s=self.ttl_s, drifting=drifting,
        )  # fmt: skip
        try:
            self._publish(drift_topic(fleet, device), encode_notice(notice), True)
        except Exception as exc:  # a notice must never stop the collector
            log.warning("could not publish the drift notice of %s/%s: %s", fleet, device, exc)

    def refresh(self) -> int:
        """Publish again the notice of every device with an open drift alert; how many."""
        devices = {(a["fleet"], a["device"]) for a in self._open(None)}
        for fleet, device in sorted(devices):
            self.publish(fleet, device)
        return len(devices)

    def _open(self, fleet: str | None) -> list[dict[str, Any]]:
        return [
            a
            for a in self._store.alerts("open", 5000, fleet)
            if a["kind"] == "drift" and a["scope"] == "device" and a["device"] and a["model"]
        ]

    def start(self) -> None:
        """Publish every open notice now, then again every ``ttl_s / 3`` seconds."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="edgedl-drift-notices",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def stop(self) -> None:
        """Stop refreshing."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing drift notices failed")
            if self._stopping.wait(self.ttl_s / 3):
                return


__all__ = ["DriftNotices"]
