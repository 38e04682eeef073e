"""What ingest hands to storage: windows and statuses to store, and messages refused."""

from __future__ import annotations

from dataclasses import dataclass

from edgedl.telemetry import DeviceStatus, TelemetryWindow

WindowKey = tuple[str, str, str, int]  # fleet, device, epoch, seq


@dataclass
class StoredWindow:
    """A window to store: what was decoded, what arrived, and a few figures for queries."""

    window: TelemetryWindow
    payload: bytes
    received_at: float
    latency_ms: tuple[float | None, float | None, float | None] = (None, None, None)
    id: int | None = None


@dataclass
class Committed:
    """What a committed batch did: the windows that were new, and those refused."""

    stored: list[StoredWindow]
    refused: list[DeadLetter]


@dataclass
class ReceivedStatus:
    """A status message and when it arrived."""

    status: DeviceStatus
    received_at: float


@dataclass
class DeadLetter:
    """A message refused by validation, kept for people to look at."""

    topic: str
    reason: str
    payload: bytes
    received_at: float


def window_key(w: TelemetryWindow) -> WindowKey:
    """The identity of a window: ``(fleet, device, epoch, seq)``."""
    return (w.fleet, w.device, w.epoch, w.seq)
