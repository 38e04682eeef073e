"""The collector's configuration: ``collector.toml`` plus ``EDGEDL_COLLECTOR__...`` overrides.

One pydantic model per section; :class:`CollectorConfig` composes them::

    [mqtt]      broker URL, client id, shared-subscription group, credentials, TLS
    [storage]   database URL, batch size and delay of commits
    [ingest]    how far a window's clock may be from the collector's
    [http]      where the API and dashboard listen
    [drift]     sliding window, minimum samples, thresholds
    [alerts]    offline detection, webhook
    [fleet]     artifact store, rollout defaults and gates (docs/fleet.md)

Environment variables override the file (``EDGEDL_COLLECTOR__DRIFT__PSI_ALERT=0.25`` sets
``drift.psi_alert``); values that look like JSON are parsed as JSON. Command-line flags
override both. Any problem raises :class:`~edgedl.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgedl.config import load_toml_config
from edgedl.errors import TelemetryError
from edgedl.telemetry import MAX_PAYLOAD_BYTES, validate_id

from .fleet.gates import Gates

ENV_PREFIX = "EDGEDL_COLLECTOR__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttConfig(_Section):
    """``[mqtt]``: the broker and how the collector subscribes."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str | None = None
    group: str = "edgedl-collectors"
    # False: a plain subscription, for a single collector. Mosquitto 2.0 does not keep shared
    # subscriptions over a broker restart (docs/collector.md); plain ones it keeps.
    shared: bool = True
    # Only these fleets' topics (empty: every fleet). One collector group per set of fleets.
    fleets: list[str] = Field(default_factory=list)
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    session_expiry_s: int = Field(default=24 * 3600, ge=0)
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_min_s: float = Field(default=0.25, gt=0)
    reconnect_max_s: float = Field(default=2.0, gt=0)
    max_payload_bytes: int = Field(default=MAX_PAYLOAD_BYTES, gt=0)

    @field_validator("group")
    @classmethod
    def _group_is_a_topic_level(cls, v: str) -> str:
        try:
            return validate_id(v, "group")
        except TelemetryError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("fleets")
    @classmethod
    def _fleets_are_topic_levels(cls, v: list[str]) -> list[str]:
        try:
            return [validate_id(f, "fleet") for f in v]
        except TelemetryError as exc:
            raise ValueError(str(exc)) from None


class StorageConfig(_Section):
    """``[storage]``: where windows go and how ingest batches its commits."""

    url: str = "sqlite:///edgedl-collector.db"
    batch_size: int = Field(default=500, ge=1)
    batch_delay_ms: float = Field(default=50.0, ge=0)
    dead_letter_bytes: int = Field(default=1024, ge=0)
    retention_days: float = Field(default=30.0, gt=0, description="windows and dead letters")
    # A window whose seq is this far from the seqs its device sent in the same spool epoch is
    # refused (dead letter): no device sends that many windows between two of its windows.
    max_seq_jump: int = Field(default=100_000, ge=1)


class IngestConfig(_Section):
    """``[ingest]``: checks a message passes besides the contract's ranges (docs/telemetry.md).

    A window that ends more than ``max_clock_skew_s`` after it arrived, or more than
    ``max_window_age_s`` before, is a dead letter: its device's clock is wrong. A status whose
    ``since`` is more than ``max_clock_skew_s`` ahead is one too (an old status is fine: a
    retained status can be days old).
    """

    max_clock_skew_s: float = Field(default=300.0, gt=0, le=86_400.0)
    max_window_age_s: float = Field(default=30 * 86_400.0, gt=0)


class HttpConfig(_Section):
    """``[http]``: the JSON API, /metrics and the dashboard."""

    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # Device-scope drift series on /metrics at most (edgedl.collector.fleet_metrics).
    metrics_max_series: int = Field(default=100_000, ge=0)
    # Bearer token for the dashboard's write actions (acknowledging an alert); unset: refused.
    admin_token: str | None = Field(default=None, min_length=16)


class SequentialConfig(_Section):
    """``[drift.sequential]``: CUSUM over each device's windows (edgedl.collector.sequential)."""

    enabled: bool = True
    # Expected windows between false alarms of one statistic's detector on unchanged data.
    windows_between_false_alarms: float = Field(default=1000.0, gt=1)
    # Per statistic (fnmatch pattern -> windows between false alarms; 0 turns it off).
    statistics: dict[str, float] = Field(default_factory=dict)
    step_samples: int = Field(default=200, ge=1, description="samples per CUSUM step")
    allowance: float = Field(default=0.5, gt=0, description="in standard errors of a step")
    reference_margin_se: float = Field(default=1.5, ge=0, description="reference's own noise")

    @field_validator("statistics")
    @classmethod
    def _run_lengths(cls, v: dict[str, float]) -> dict[str, float]:
        for pattern, arl in v.items():
            if arl != 0 and arl <= 1:
                raise ValueError(f"{pattern}: windows between false alarms must be > 1 (or 0)")
        return v


class DriftConfig(_Section):
    """``[drift]``: what is compared and when a difference is a drift.

    A figure alerts when its test is significant at ``false_alarm_rate`` AND the figure is at
    least its ``*_alert`` minimum effect (edgedl.collector.decision).
    """

    window_count: int = Field(
        default=12, ge=1, le=1000, description="windows in the sliding window"
    )
    min_samples: int = Field(default=200, ge=1)
    # Pipeline stage health (edgedl.collector.pipeline_health): windows summed per device and
    # pipeline, and the seconds of audio a sum needs before it is judged.
    pipeline_health_windows: int = Field(default=6, ge=1, le=10_000)
    pipeline_health_min_audio_s: float = Field(default=20.0, gt=0)
    baseline_windows: int = Field(default=10, ge=1, description="latency baseline: first K")
    evaluate_interval_s: float = Field(default=0.5, gt=0)
    max_evaluations_per_s: float = Field(default=250.0, gt=0)
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=1, description="per test and window")
    psi_watch: float = Field(default=0.1, ge=0)
    psi_alert: float = Field(default=0.2, ge=0)
    js_alert: float = Field(default=0.1, ge=0)
    ks_alert: float = Field(default=0.05, ge=0)
    wasserstein_alert: float = Field(default=0.1, ge=0)
    class_psi_alert: float = Field(default=0.2, ge=0)
    confidence_shift_alert: float = Field(default=0.1, ge=0)
    latency_p95_ratio_alert: float = Field(default=2.0, gt=0)
    error_rate_alert: float = Field(default=0.05, ge=0)
    # Which figures alert (the others are computed, tested and shown): psi, js, ks,
    # wasserstein, class_psi, confidence_shift, cusum.
    alert_on: list[str] = Field(
        default_factory=lambda: ["psi", "wasserstein", "class_psi", "confidence_shift", "cusum"]
    )
    sequential: SequentialConfig = Field(default_factory=SequentialConfig)
    fleet: bool = True
    # Also fold in windows that other collectors of the group stored in the shared database,
    # so that every collector judges each device's whole sliding window.
    read_shared_store: bool = True


class AlertsConfig(_Section):
    """``[alerts]``: offline detection and where alerts are sent besides MQTT."""

    offline_after_windows: float = Field(default=3.0, gt=0)
    default_window_s: float = Field(default=60.0, gt=0)
    webhook: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    # Real accuracy from late labels (edgedl.collector.accuracy_alerts): off unless a bound is
    # set; judged once a device (or fleet) has accuracy_min_labels labels in the last
    # accuracy_window_s seconds of windows.
    accuracy_below: float | None = Field(default=None, ge=0.0, le=1.0)
    accuracy_min_labels: int = Field(default=30, ge=1)
    # Drift notices (edgedl.collector.drift_notices): a device's retained notice of its open
    # drift alerts is republished every drift_notice_ttl_s / 3 s; agents forget one older
    # than drift_notice_ttl_s.
    drift_notice_ttl_s: float = Field(default=600.0, ge=1.0, le=7 * 86_400.0)
    accuracy_window_s: float = Field(default=3600.0, gt=0)


class FleetConfig(_Section):
    """``[fleet]``: the artifact store, how devices download from it, rollout defaults."""

    artifacts_path: str = "edgedl-artifacts"
    # The base URL devices download bundles from (default: this collector's HTTP address).
    public_url: str | None = None
    max_bundle_mb: float = Field(default=512.0, gt=0)
    trusted_keys: list[str] = Field(default_factory=list, description="Ed25519 public keys")
    require_signature: bool | None = None  # default: true when trusted_keys are listed
    probation_s: float = Field(default=300.0, gt=0)
    arrival_timeout_s: float = Field(default=600.0, gt=0)
    baseline_s: float = Field(default=600.0, gt=0, description="previous version's p95 window")
    tick_s: float = Field(default=0.5, gt=0)
    # Collectors sharing a database elect one wave controller with a lease of this many
    # seconds (edgedl.collector.leader): a dead leader is replaced this long after it died.
    leader_lease_s: float = Field(default=15.0, gt=0)
    gates: Gates = Field(default_factory=Gates)

    @model_validator(mode="after")
    def _lease_outlasts_ticks(self) -> FleetConfig:
        if self.leader_lease_s < 3 * self.tick_s:
            raise ValueError(
                f"leader_lease_s ({self.leader_lease_s:g}) must be at least three ticks "
                f"(tick_s {self.tick_s:g}): the leader renews its lease every tick"
            )
        return self


class RegistryConfig(_Section):
    """``[registry]``: whether only enrolled devices (``edgedl collector devices add``) count."""

    required: bool = False


class CollectorConfig(_Section):
    """The whole ``collector.toml``."""

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    references: list[str] = Field(default_factory=list)
    # Stage-health profiles of pipelines (edgedl agent run-pipeline --profile OUT).
    pipeline_references: list[str] = Field(default_factory=list)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> CollectorConfig:
    """Read ``path`` (optional), apply environment overrides, then ``overrides``; validate.

    ``overrides`` maps dotted keys (``"http.port"``) to values, for command-line flags.
    Raise :class:`ConfigError` naming the file, the key and the problem.
    """
    return load_toml_config(
        CollectorConfig, path, env_prefix=ENV_PREFIX, env=env, overrides=overrides
    )
