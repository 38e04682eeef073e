"""Configuration of telemetry (``[telemetry]`` in agent.toml).

```toml
[telemetry]
mqtt = "mqtts://broker.example.com"      # off when absent
fleet = "factory-7"
device = "pi-42"
interval_s = 60
ca_file = "/etc/edgedl/ca.pem"           # TLS: the broker's CA
cert_file = "/etc/edgedl/device.pem"     # TLS: this device's certificate and key
key_file = "/etc/edgedl/device.key"
username = "pi-42"                       # password: EDGEDL_TELEMETRY__PASSWORD is safer
```
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

# A topic segment: no MQTT wildcards, no separators, nothing a shell or a URL would mangle.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}


def _default_device() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._")
    return name[:128] or "device"


def _default_spool() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return Path(state) / "edgedl" / "telemetry-spool.db"


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker is, read from the ``mqtt`` URL."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


class TelemetryConfig(BaseModel):
    """Telemetry windows over MQTT. Off unless a broker URL is given."""

    model_config = ConfigDict(extra="forbid")

    mqtt: str | None = None
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` (TLS); user:password@ is accepted."""
    fleet: str = "default"
    device: str = Field(default_factory=_default_device)
    client_id: str | None = None
    """Stable MQTT client id (the persistent session hangs on it); default ``edgedl-{fleet}-{device}``."""
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    interval_s: float = Field(default=60.0, gt=0)
    max_inferences_per_window: int | None = Field(default=None, gt=0)
    """Cut a window early once it holds this many inferences (besides every ``interval_s``)."""
    compression: Literal["zstd", "gzip"] = "zstd"
    spool_path: Path = Field(default_factory=_default_spool)
    spool_max_bytes: int = Field(default=50_000_000, gt=0)
    spool_max_windows: int | None = Field(default=None, gt=0)
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of inferences sent as raw records (input statistics and prediction); 0 = off."""
    max_samples_per_window: int = Field(default=16, ge=0)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """A request slower than this counts as a latency violation (none counted when unset)."""
    max_inflight: int = Field(default=20, ge=1, le=1000)
    keepalive_s: int = Field(default=30, ge=5)
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)

    @field_validator("fleet", "device")
    @classmethod
    def _topic_segment(cls, v: str) -> str:
        if not _SEGMENT_RE.match(v):
            raise ValueError(
                f"{v!r} must be 1-128 letters, digits, '.', '_' or '-' (it is part of MQTT topics)"
            )
        return v

    @field_validator("mqtt")
    @classmethod
    def _broker_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in _SCHEMES:
            raise ValueError("the broker URL must start with mqtt:// or mqtts://")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError as exc:
            raise ValueError(f"bad port in broker URL: {exc}") from None
        if not parts.hostname:
            raise ValueError("the broker URL has no host")
        return v

    @model_validator(mode="after")
    def _tls_pairs(self) -> TelemetryConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        tls_files = self.ca_file or self.cert_file
        if tls_files is not None and self.mqtt is not None and not self.mqtt.startswith("mqtts:"):
            raise ValueError("ca_file/cert_file need an mqtts:// broker URL")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is below reconnect_min_s")
        return self

    @property
    def enabled(self) -> bool:
        """Whether a broker is configured."""
        return self.mqtt is not None

    @property
    def effective_client_id(self) -> str:
        """The client id the broker keeps this device's session under."""
        return self.client_id or f"edgedl-{self.fleet}-{self.device}"

    def broker(self) -> BrokerAddress:
        """Host, port, TLS and credentials; the ``username``/``password`` keys win over the URL."""
        if self.mqtt is None:
            raise ValueError("telemetry has no broker URL")
        parts = urlsplit(self.mqtt)
        tls, default_port = _SCHEMES[parts.scheme]
        password = self.password.get_secret_value() if self.password is not None else None
        if password is None and parts.password is not None:
            password = unquote(parts.password)
        username = self.username or (unquote(parts.username) if parts.username else None)
        return BrokerAddress(
            host=parts.hostname or "",
            port=parts.port or default_port,
            tls=tls,
            username=username,
            password=password,
        )

    def redacted_url(self) -> str:
        """The broker URL as it may be logged: no password."""
        if self.mqtt is None:
            return "(off)"
        parts = urlsplit(self.mqtt)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}"
