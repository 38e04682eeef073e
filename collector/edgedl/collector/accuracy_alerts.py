"""Alerts on real accuracy: raised when the labelled accuracy falls below ``[alerts]
accuracy_below``, per device and per fleet, for each model version that received labels.

Judged after each stored batch that carries labels (and after labels sent to the collector
directly), over the windows that ended in the last
``accuracy_window_s`` seconds, once at least ``accuracy_min_labels`` labels are in that span;
resolved when a later judgement is back at or above the bound.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .accuracy import LabelScope, classification_metrics, confusion
from .alerts import AlertBook, AlertSubject
from .batch import StoredWindow
from .config import AlertsConfig
from .store import Store


class AccuracyWatch:
    """Judges real accuracy after each stored batch (see the module docstring)."""

    def __init__(self, store: Store, alerts: AlertBook, config: AlertsConfig) -> None:
        self._store = store
        self._alerts = alerts
        self._config = config

    def observe(self, stored: Sequence[StoredWindow], now: float | None = None) -> None:
        """Judge the device and fleet accuracy of every model version these windows labelled."""
        bound = self._config.accuracy_below
        if bound is None:
            return
        touched = {
            (item.window.fleet, item.window.device, m.name, m.version)
            for item in stored
            for m in item.window.models
            if m.labels is not None
        }
        self.judge(touched, now)

    def judge(self, touched: set[tuple[str, str, str, str]], now: float | None = None) -> None:
        """Judge these (fleet, device, model, version) and their fleets' accuracy."""
        bound = self._config.accuracy_below
        if bound is None or not touched:
            return
        now = time.time() if now is None else now
        since = now - self._config.accuracy_window_s
        fleets = {(fleet, model, version) for fleet, _, model, version in touched}
        for fleet, device, model, version in sorted(touched):
            self._judge(LabelScope(fleet, device, model, version, since), bound, now)
        for fleet, model, version in sorted(fleets):
            self._judge(LabelScope(fleet, None, model, version, since), bound, now)

    def _judge(self, scope: LabelScope, bound: float, now: float) -> None:
        metrics = classification_metrics(confusion(self._store, scope).get((), []))
        accuracy = metrics["accuracy"]
        if accuracy is None:
            return
        judged = metrics["labelled"] >= self._config.accuracy_min_labels
        where = f"{scope.fleet}/{scope.device}" if scope.device else f"fleet {scope.fleet}"
        self._alerts.observe(
            AlertSubject(
                "accuracy",
                "device" if scope.device else "fleet",
                scope.fleet or "",
                scope.device,
                scope.model,
                scope.version,
                "accuracy",
            ),
            accuracy,
            bound,
            breached=judged and accuracy < bound,
            judged=judged,
            message=(
                f"{where}: {scope.model} {scope.version} real accuracy {accuracy:.3f} on "
                f"{metrics['labelled']} labels (bound {bound:g})"
            ),
            now=now,
        )


__all__ = ["AccuracyWatch"]
