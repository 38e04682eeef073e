"""The collector as one object: storage, MQTT ingest, drift monitor, alerts and HTTP.

``Collector(config).start()`` returns once the database is migrated and the HTTP server
listens; MQTT connects in the background (an absent broker is retried). ``stop()`` commits
and acknowledges what was received, lets the drift monitor finish, and closes everything.
Tests and ``edgedl collector run`` use the same class.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from edgedl.errors import ConfigError

from . import estimates
from .accuracy_alerts import AccuracyWatch
from .alerts import AlertBook
from .api import create_app, is_online
from .config import CollectorConfig
from .drift_notices import DriftNotices
from .fleet.service import Fleet
from .fleet_metrics import FleetMetrics
from .ingest import Ingestor
from .metrics import CollectorMetrics
from .monitor import DriftMonitor
from .mqtt import MqttConsumer
from .pipeline_health import PipelineHealthBook
from .references import ReferenceBook
from .store import Store, StoredWindow

log = logging.getLogger("edgedl.collector")


def tune_gc() -> None:
    """Make CPython's garbage collector cheap for a long-running ingest process.

    Ingest allocates about a hundred short-lived objects per window (the validated model),
    none of them in reference cycles. With the default gen-0 threshold of 700 a collection
    runs every few windows and the older generations are walked often: a third of ingest CPU
    in ``bench/telemetry.py``. Raising the thresholds and freezing what start-up allocated
    leaves reference counting to free almost everything, as it would anyway.
    Process-wide, so ``edgedl collector run`` calls it, not :class:`Collector`.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


class Collector:
    """Everything the collector runs, with start()/stop()."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.metrics = CollectorMetrics()
        self.store = Store(config.storage.url, max_seq_jump=config.storage.max_seq_jump)
        self.references = ReferenceBook(self.store)
        for path in config.references:
            self.references.register_path(path)
        self.mqtt: MqttConsumer | None = None
        self.alerts = AlertBook(
            self.store,
            publish=self._publish,
            webhook=config.alerts.webhook,
            webhook_timeout_s=config.alerts.webhook_timeout_s,
            on_change=self._alert_changed,
        )
        self.drift_notices = DriftNotices(
            self.store, self._publish_retained, config.alerts.drift_notice_ttl_s
        )
        self.pipeline_health = PipelineHealthBook(
            self.store,
            self.alerts,
            windows=config.drift.pipeline_health_windows,
            min_audio_s=config.drift.pipeline_health_min_audio_s,
        )
        for path in config.pipeline_references:
            self.pipeline_health.register_path(path)
        self.monitor = DriftMonitor(
            self.store,
            self.references,
            self.alerts,
            config.drift,
            config.alerts,
            on_evaluated=self.metrics.evaluations.inc,
            retention_s=config.storage.retention_days * 86400.0,
            pipeline_health=self.pipeline_health,
        )
        self.metrics.registry.register(
            FleetMetrics(
                self.monitor,
                self.store,
                online=lambda row, now: is_online(row, self, now),
                max_series=config.http.metrics_max_series,
            )
        )
        self.accuracy = AccuracyWatch(self.store, self.alerts, config.alerts)
        self.ingestor = Ingestor(
            self.store,
            config.mqtt.max_payload_bytes,
            on_stored=self._stored,
            registry_required=config.registry.required,
            clock=config.ingest,
        )
        self.mqtt = MqttConsumer(config.mqtt, config.storage, self.ingestor, self.metrics)
        self.fleet = Fleet(self)
        self.started_at = time.time()
        self._server: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.http_port = config.http.port

    def _stored(self, stored: list[StoredWindow]) -> None:
        """New windows: to the drift monitor, and their labels to the accuracy alerts."""
        self.monitor.submit(stored)
        try:
            estimates.record(self.store, stored, self.references)
            self.accuracy.observe(stored)
        except Exception:  # the windows are committed; estimates and alerts are derived
            log.exception("estimating or judging accuracy failed")

    def _publish(self, topic: str, data: bytes) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(topic, data)

    def _publish_retained(self, topic: str, data: bytes, retain: bool) -> None:
        if self.mqtt is not None:
            self.mqtt.publish(topic, data, retain=retain)

    def _alert_changed(self, alert: dict[str, Any]) -> None:
        self.metrics.alerts_open.set(self.alerts.open_count)
        self.drift_notices.on_alert(alert)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API and dashboard."""
        host = self.config.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://{host}:{self.http_port}"

    def start(self) -> Collector:
        """Start HTTP, the drift monitor and MQTT ingest; return self."""
        self.metrics.alerts_open.set(self.alerts.open_count)
        self.alerts.start()
        self.monitor.start()
        self._start_http()
        if self.mqtt is not None:
            self.mqtt.start()
        self.fleet.start()
        self.drift_notices.start()
        log.info("collector listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Finish the batch in hand, acknowledge it, stop every thread, close the database."""
        self.fleet.stop()
        self.drift_notices.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        self.monitor.stop()
        self.alerts.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._http_thread is not None:
            self._http_thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self.store.close()

    def _start_http(self) -> None:
        cfg = self.config.http
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"http: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror})"
            ) from exc
        sock.listen(128)
        self._socket = sock
        self.http_port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(create_app(self), log_level="warning", lifespan="off", access_log=False)
        )
        self._server = server
        self._http_thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="edgedl-http", daemon=True
        )
        self._http_thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
