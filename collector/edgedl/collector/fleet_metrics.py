"""Prometheus gauges of drift, health and open alerts per device and per fleet.

Computed at scrape time from what the collector already holds: the drift monitor's latest
evaluation of every key (device or fleet, model, version), the device table and the open
alerts. Nothing is kept between scrapes, so a device that leaves the monitor leaves /metrics.

Series (labels in braces; ``scope`` is ``device`` or ``fleet``, ``device`` is empty for a fleet):

- ``edgedl_device_online``, ``edgedl_device_last_window_age_seconds``,
  ``edgedl_device_windows_missing``, ``edgedl_device_windows_stored``
  {fleet, device, model, version}
- ``edgedl_error_rate``, ``edgedl_latency_p95_seconds``, ``edgedl_sliding_samples``
  {scope, fleet, device, model, version}
- ``edgedl_drift_effect``, ``edgedl_drift_min_effect``, ``edgedl_drift_p_value``,
  ``edgedl_drift_detected`` {scope, fleet, device, model, version, statistic, test}
- ``edgedl_drift_cusum_score``, ``edgedl_drift_cusum_threshold``
  {fleet, device, model, version, statistic}
- ``edgedl_alert_open`` {kind, scope, fleet, device, model, version, metric}: 1 per open alert

Cardinality: the drift series number devices x model versions x statistics x alerting tests
(x 4 series) plus x 3 per CUSUM. Device-scope drift and CUSUM series beyond ``max_series``
are left out, whole keys at a time (fleet-scope ones and health never are), and counted in
``edgedl_collector_metrics_series_dropped``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector as PromCollector

from .jsonsafe import finite_or_none

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .monitor import DriftMonitor
    from .store import Store

DEVICE_LABELS = ["fleet", "device", "model", "version"]
SCOPED_LABELS = ["scope", *DEVICE_LABELS]
DRIFT_LABELS = [*SCOPED_LABELS, "statistic", "test"]
CUSUM_LABELS = [*DEVICE_LABELS, "statistic"]
ALERT_LABELS = ["kind", "scope", "fleet", "device", "model", "version", "metric"]
MAX_OPEN_ALERTS = 5000


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _s(value: Any) -> str:
    return "" if value is None else str(value)


class FleetMetrics(PromCollector):
    """A Prometheus collector of per-device and per-fleet drift, health and alerts."""

    def __init__(
        self,
        monitor: DriftMonitor,
        store: Store,
        online: Callable[[dict[str, Any], float], bool],
        max_series: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.monitor = monitor
        self.store = store
        self.online = online
        self.max_series = max_series
        self.clock = clock

    def describe(self) -> list[Metric]:
        """Nothing up front: the series depend on what the collector holds at scrape time."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every gauge, from the monitor's latest results, the devices and the open alerts."""
        now = self.clock()
        yield from self._devices(now)
        yield from self._results()
        yield from self._alerts()

    def _devices(self, now: float) -> Iterator[Metric]:
        online = _gauge("edgedl_device_online", "1 when the device sends windows", DEVICE_LABELS)
        age = _gauge(
            "edgedl_device_last_window_age_seconds",
            "Seconds since the end of the device's newest window",
            DEVICE_LABELS,
        )
        missing = _gauge(
            "edgedl_device_windows_missing", "Windows never received (seq gaps)", DEVICE_LABELS
        )
        stored = _gauge("edgedl_device_windows_stored", "Windows stored", DEVICE_LABELS)
        for row in self.store.devices():
            labels = [_s(row["fleet"]), _s(row["device"]), _s(row["model"]), _s(row["version"])]
            online.add_metric(labels, 1.0 if self.online(row, now) else 0.0)
            last = finite_or_none(row.get("last_seen"))
            if last is not None:
                age.add_metric(labels, max(0.0, now - last))
            missing.add_metric(labels, float(row.get("missing") or 0))
            stored.add_metric(labels, float(row.get("windows") or 0))
        yield from (online, age, missing, stored)

    def _results(self) -> Iterator[Metric]:
        err = _gauge("edgedl_error_rate", "Errors per request in the sliding window", SCOPED_LABELS)
        p95 = _gauge(
            "edgedl_latency_p95_seconds", "p95 latency in the sliding window", SCOPED_LABELS
        )
        samples = _gauge("edgedl_sliding_samples", "Samples in the sliding window", SCOPED_LABELS)
        effect = _gauge(
            "edgedl_drift_effect", "Effect size of a drift test (PSI, JS, ...)", DRIFT_LABELS
        )
        bound = _gauge(
            "edgedl_drift_min_effect", "Effect a drift decision needs (its bound)", DRIFT_LABELS
        )
        p_value = _gauge("edgedl_drift_p_value", "p-value of a drift test", DRIFT_LABELS)
        detected = _gauge(
            "edgedl_drift_detected", "1 when the test decides drift (judged)", DRIFT_LABELS
        )
        score = _gauge("edgedl_drift_cusum_score", "CUSUM score of a statistic", CUSUM_LABELS)
        limit = _gauge("edgedl_drift_cusum_threshold", "CUSUM alarm threshold", CUSUM_LABELS)
        dropped = 0
        device_series = 0
        for result in self.monitor.results():
            scope = result["scope"]
            base = [
                scope,
                _s(result["fleet"]),
                _s(result["device"]),
                _s(result["model"]),
                _s(result["version"]),
            ]
            rate = finite_or_none(result["errors"]["rate"])
            if rate is not None:
                err.add_metric(base, rate)
            lat = finite_or_none(result["latency"]["p95_ms"])
            if lat is not None:
                p95.add_metric(base, lat / 1000.0)
            samples.add_metric(base, float(result["samples"]))
            decisions = [d for s in result["statistics"] for d in s["decisions"]]
            decisions += [c["decision"] for c in result["classes"]]
            sequential = result.get("sequential", [])
            if scope == "device":
                # effect, bound, p-value, detected per decision; score, bound, detected per CUSUM
                wanted = 4 * len(decisions) + 3 * len(sequential)
                if device_series + wanted > self.max_series:
                    dropped += wanted
                    continue
                device_series += wanted
            for d in decisions:
                labels = [*base, _s(d["statistic"]), _s(d["test"])]
                value = finite_or_none(d["effect"])
                if value is not None:
                    effect.add_metric(labels, value)
                bound.add_metric(labels, float(d["min_effect"]))
                p = finite_or_none(d["p_value"])
                if p is not None:
                    p_value.add_metric(labels, p)
                detected.add_metric(labels, 1.0 if d["is_drift"] else 0.0)
            for d in sequential:
                labels = [*base[1:], _s(d["statistic"])]
                value = finite_or_none(d["score"])
                if value is not None:
                    score.add_metric(labels, value)
                limit.add_metric(labels, float(d["threshold"]))
                detected.add_metric([*base, _s(d["statistic"]), "cusum"], float(d["is_drift"]))
        cut = GaugeMetricFamily(
            "edgedl_collector_metrics_series_dropped",
            "Device drift series left out of this scrape (over metrics_max_series)",
            value=float(dropped),
        )
        yield from (err, p95, samples, effect, bound, p_value, detected, score, limit, cut)

    def _alerts(self) -> Iterator[Metric]:
        gauge = _gauge("edgedl_alert_open", "1 for every open alert", ALERT_LABELS)
        for a in self.store.alerts("open", MAX_OPEN_ALERTS):
            gauge.add_metric([_s(a[k]) for k in ALERT_LABELS], 1.0)
        yield gauge
