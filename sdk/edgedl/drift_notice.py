"""The drift notice: the collector tells a device which of its model versions drift now.

The collector retains one :class:`DriftNotice` per device on :func:`drift_topic`,
``edgedl/v1/{fleet}/{device}/drift`` (QoS 1), listing the model versions for which a
device-scope drift alert is open; it publishes it again when one opens or resolves, and every
``ttl_s / 3`` seconds while any is open. An agent with ``[sampling] during_drift_rate`` set
subscribes on its telemetry connection and samples at that rate while a notice lists the
version it serves, until a notice without it arrives or ``ttl_s`` passes without a fresh one
(a collector that stopped refreshing, or a broker the agent cannot reach).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgedl.errors import TelemetryError
from edgedl.telemetry import MAX_NAME, TOPIC_ROOT, validate_id

#: Largest drift notice accepted.
MAX_NOTICE_BYTES = 64 * 1024
#: Default life of a notice that is not refreshed.
DEFAULT_TTL_S = 600.0

_Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def drift_topic(fleet: str, device: str) -> str:
    """``edgedl/v1/{fleet}/{device}/drift``: the device's retained drift notice."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/{validate_id(device, 'device')}/drift"


class DriftingVersion(BaseModel):
    """A model version with an open drift alert on the device."""

    model_config = ConfigDict(extra="ignore")
    model: _Name
    version: _Name
    opened_at: float


class DriftNotice(BaseModel):
    """The model versions of one device that drift now (see the module docstring)."""

    model_config = ConfigDict(extra="ignore")
    schema_version: int = 1
    fleet: _Name
    device: _Name
    time: float
    ttl_s: float = Field(default=DEFAULT_TTL_S, gt=0, le=7 * 86_400.0)
    drifting: list[DriftingVersion] = Field(default_factory=list, max_length=256)


def encode_notice(notice: DriftNotice) -> bytes:
    """The notice as published (JSON)."""
    return notice.model_dump_json().encode("utf-8")


def decode_notice(payload: bytes) -> DriftNotice:
    """A notice from the wire; :class:`TelemetryError` when it is not one."""
    if len(payload) > MAX_NOTICE_BYTES:
        raise TelemetryError(f"a drift notice is at most {MAX_NOTICE_BYTES} bytes")
    try:
        return DriftNotice.model_validate_json(payload)
    except ValidationError as exc:
        raise TelemetryError(f"not a drift notice: {exc.errors()[0]['msg']}") from exc


__all__ = [
    "DEFAULT_TTL_S",
    "DriftNotice",
    "DriftingVersion",
    "decode_notice",
    "drift_topic",
    "encode_notice",
]
