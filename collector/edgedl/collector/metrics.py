"""The collector's own Prometheus metrics (one registry per collector, served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class CollectorMetrics:
    """Counters and gauges about ingest, dead letters, drift and alerts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "edgedl_collector_messages_received", "MQTT messages received", registry=r
        )
        self.windows = Counter(
            "edgedl_collector_windows_ingested", "Telemetry windows stored", registry=r
        )
        self.duplicates = Counter(
            "edgedl_collector_windows_duplicate",
            "Windows received again and not stored twice (redelivery, agent resend)",
            registry=r,
        )
        self.samples = Counter(
            "edgedl_collector_samples_stored", "Samples for retraining stored", registry=r
        )
        self.samples_duplicate = Counter(
            "edgedl_collector_samples_duplicate",
            "Samples received again and not stored twice (redelivery)",
            registry=r,
        )
        self.dead_letters = Counter(
            "edgedl_collector_dead_letters", "Messages refused by validation", registry=r
        )
        self.storage_errors = Counter(
            "edgedl_collector_storage_errors", "Batches the database did not take", registry=r
        )
        self.evaluations = Counter(
            "edgedl_collector_drift_evaluations", "Drift evaluations (device and fleet)", registry=r
        )
        self.fleet_leader = Gauge(
            "edgedl_collector_fleet_leader",
            "1 while this collector runs the fleet's wave controller (holds its lease), else 0",
            registry=r,
        )
        self.alerts_open = Gauge("edgedl_collector_alerts_open", "Alerts open now", registry=r)
        self.ingest_lag = Gauge(
            "edgedl_collector_ingest_lag_seconds",
            "Seconds from the end of the newest stored window to its commit",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "edgedl_collector_commit_seconds",
            "Time to validate and commit one batch",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.batch_size = Histogram(
            "edgedl_collector_batch_messages",
            "Messages per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000),
            registry=r,
        )

    def text(self) -> bytes:
        """The Prometheus text exposition of these metrics."""
        return generate_latest(self.registry)
