"""Alerts: raised once when a metric crosses its bound, resolved when it comes back under.

An alert is identified by its kind, scope, fleet, device, model, version and metric. While it
is open its key sits in the ``open_key`` column, whose unique index keeps it raised once even
with several collectors on one database; the collector that wins the insert (or the resolve)
is the one that announces it: on ``edgedl/v1/{fleet}/alerts`` and, when configured, as a POST
to a webhook (sent from a background thread, so a slow webhook never slows ingest).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgedl.telemetry import alerts_topic

from .store import Store

log = logging.getLogger("edgedl.collector.alerts")

Publish = Callable[[str, bytes], None]
#: Kinds of alert about what a model version answers: moot once it no longer answers.
RETIRED_KINDS = ("drift", "accuracy", "latency", "errors")


@dataclass(frozen=True)
class AlertSubject:
    """What an alert is about."""

    kind: str  # drift, latency, offline, errors
    scope: str  # device or fleet
    fleet: str
    device: str | None
    model: str | None
    version: str | None
    metric: str

    @property
    def key(self) -> str:
        """The identity of the alert while it is open."""
        return "|".join(
            [
                self.kind,
                self.scope,
                self.fleet,
                self.device or "*",
                self.model or "*",
                self.version or "*",
                self.metric,
            ]
        )[:600]


def alert_json(row: dict[str, Any]) -> dict[str, Any]:
    """An alert row as the API and the MQTT message show it."""
    return {
        "id": row.get("id"),
        "kind": row["kind"],
        "scope": row["scope"],
        "fleet": row["fleet"],
        "device": row["device"],
        "model": row["model"],
        "version": row["version"],
        "metric": row["metric"],
        "value": row["value"],
        "threshold": row["threshold"],
        "state": row["state"],
        "opened_at": row["opened_at"],
        "resolved_at": row.get("resolved_at"),
        "acknowledged_at": row.get("acknowledged_at"),
        "message": row.get("message"),
    }


class AlertBook:
    """Opens and resolves alerts, and announces each change once."""

    def __init__(
        self,
        store: Store,
        publish: Publish | None = None,
        webhook: str | None = None,
        webhook_timeout_s: float = 5.0,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._store = store
        self._publish = publish
        self._on_change = on_change
        self._open = store.open_alert_keys()
        # The value last observed of each open alert (this collector's, since its start).
        self._current: dict[str, tuple[float, float]] = {}
        self._webhook = _Webhook(webhook, webhook_timeout_s) if webhook else None

    @property
    def open_count(self) -> int:
        """Alerts open as far as this collector knows."""
        return len(self._open)

    def current(self, open_key: str | None) -> tuple[float, float] | None:
        """(value, when) last observed of the open alert with this key, or None."""
        return self._current.get(open_key) if open_key else None

    def start(self) -> None:
        """Start the webhook sender, if any."""
        if self._webhook:
            self._webhook.start()

    def stop(self) -> None:
        """Stop the webhook sender after what it holds is sent (or has timed out)."""
        if self._webhook:
            self._webhook.stop()

    def observe(
        self,
        subject: AlertSubject,
        value: float,
        threshold: float,
        breached: bool,
        judged: bool = True,
        message: str = "",
        now: float | None = None,
    ) -> None:
        """Open the alert when ``breached``; resolve it when judged and back under its bound."""
        if not breached and not self._open:
            return  # the common case: nothing open, nothing to open
        now = time.time() if now is None else now
        key = subject.key
        if breached:
            self._current[key] = (float(value), now)
        if breached and key not in self._open:
            row = {
                "open_key": key,
                "kind": subject.kind,
                "scope": subject.scope,
                "fleet": subject.fleet,
                "device": subject.device,
                "model": subject.model,
                "version": subject.version,
                "metric": subject.metric,
                "value": float(value),
                "threshold": float(threshold),
                "state": "open",
                "opened_at": now,
                "message": message[:500],
            }
            self._open.add(key)
            new_id = self._store.open_alert(row)
            if new_id is not None:
                self._announce({**row, "id": new_id})
        elif not breached and judged and key in self._open:
            self._open.discard(key)
            self._current.pop(key, None)
            resolved = self._store.resolve_alert(key, float(value), now)
            if resolved is not None:
                self._announce(resolved)

    def retire(
        self,
        fleet: str,
        model: str,
        versions: dict[str, str],
        fleet_versions: set[str],
        kinds: tuple[str, ...] = RETIRED_KINDS,
        now: float | None = None,
    ) -> list[dict[str, Any]]:
        """Resolve the open ``kinds`` alerts of versions that no longer answer: per device
        (``versions``: device -> the version replaced there) and fleet-wide (``fleet_versions``:
        versions no device of the fleet runs any more). Returns the alerts resolved."""
        now = time.time() if now is None else now
        done = []
        for row in self._store.alerts(state="open", fleet=fleet):
            if row["kind"] not in kinds or row["model"] != model:
                continue
            replaced = (
                versions.get(row["device"] or "") == row["version"]
                if row["scope"] == "device"
                else row["version"] in fleet_versions
            )
            key = row.get("open_key")
            if not replaced or not key:
                continue
            self._open.discard(key)
            self._current.pop(key, None)
            resolved = self._store.resolve_alert(key, float(row["value"]), now)
            if resolved is not None:
                self._announce(resolved)
                done.append(resolved)
        return done

    def _announce(self, row: dict[str, Any]) -> None:
        body = alert_json(row)
        data = json.dumps(body).encode("utf-8")
        if self._publish is not None:
            try:
                self._publish(alerts_topic(body["fleet"]), data)
            except Exception as exc:  # an alert must never stop the collector
                log.warning("could not publish alert: %s", exc)
        if self._webhook is not None:
            self._webhook.send(data)
        if self._on_change is not None:
            self._on_change(body)


class _Webhook:
    """POSTs alert JSON to a URL from its own thread."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._run, name="edgedl-webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=self.timeout_s * 2)

    def send(self, data: bytes) -> None:
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            log.warning("webhook queue full: an alert notification was dropped")

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while (data := self._queue.get()) is not None:
                try:
                    client.post(
                        self.url, content=data, headers={"content-type": "application/json"}
                    ).raise_for_status()
                except httpx.HTTPError as exc:
                    log.warning("webhook %s failed: %s", self.url, exc)
