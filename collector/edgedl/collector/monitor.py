"""The drift monitor: keeps sliding windows as windows arrive, judges them, raises alerts.

Ingest hands every newly stored window to :meth:`DriftMonitor.submit`; the monitor's thread
folds it into the sliding window of its device and model version (and into the fleet total of
that model version) and, every ``evaluate_interval_s``, evaluates the keys that changed. So a
shift shows within about a second of the window that carries it, and ingest never waits for
drift. A device, ``(fleet, device)``, seen for the first time since start is first loaded from
the database (its first windows for the latency baseline, its last stored for the sliding
window), so a restart changes no figure.

Evaluation is bounded (``max_evaluations_per_s``, oldest change first) so that a burst from
thousands of devices delays drift figures by a few ticks instead of slowing ingest.

Judged only with at least ``min_samples`` in the sliding window: small samples give
results, marked ``judged: false``, but never alerts.

Each device's windows also feed its CUSUMs (:mod:`edgedl.collector.sequential`), in seq
order; their state is saved every tick and continued after a restart.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from edgedl.errors import TelemetryError
from edgedl.telemetry import decode_window

from .alerts import AlertBook, AlertSubject
from .config import AlertsConfig, DriftConfig
from .evaluation import evaluate
from .jsonsafe import finite_or_none
from .pipeline_health import PipelineHealthBook
from .references import ReferenceBook, ReferenceModel
from .sequential import SequentialBook
from .sliding import Contribution, LatencyBaseline, SlidingWindow
from .store import Store, StoredWindow

log = logging.getLogger("edgedl.collector.monitor")

DeviceKey = tuple[str, str, str, str]  # fleet, device, model, version
FleetKey = tuple[str, str, str]  # fleet, model, version
HISTORY = 120
PRUNE_EVERY_S = 600.0
SYNC_EVERY_S = 1.0
SYNC_LAG_IDS = 5000


class DriftMonitor:
    """Sliding windows, drift evaluation and alerting, on its own thread."""

    def __init__(
        self,
        store: Store,
        references: ReferenceBook,
        alerts: AlertBook,
        drift_config: DriftConfig,
        alerts_config: AlertsConfig,
        on_evaluated: Callable[[int], None] | None = None,
        retention_s: float | None = None,
        pipeline_health: PipelineHealthBook | None = None,
    ) -> None:
        self.store = store
        self.pipeline_health = pipeline_health
        self.references = references
        self.alerts = alerts
        self.cfg = drift_config
        self.alerts_cfg = alerts_config
        self._on_evaluated = on_evaluated
        self._inbox: queue.Queue[list[StoredWindow]] = queue.Queue()
        self._devices: dict[DeviceKey, SlidingWindow] = {}
        self._baselines: dict[DeviceKey, LatencyBaseline] = {}
        self._fleets: dict[FleetKey, Contribution] = {}
        self._fleet_refs: dict[FleetKey, ReferenceModel | None] = {}
        # The devices of each fleet total, in the order they appeared (sums in a fixed order).
        self._fleet_devices: dict[FleetKey, dict[DeviceKey, None]] = {}
        self._loaded: set[tuple[str, str]] = set()
        self._known_at_start: set[tuple[str, str]] = set()
        # Insertion-ordered: the keys that changed longest ago are evaluated first.
        self._dirty: dict[DeviceKey, None] = {}
        self._results: dict[tuple[str, ...], dict[str, Any]] = {}
        self._history: dict[tuple[str, ...], deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_offline_check = 0.0
        self._last_prune = 0.0
        self._last_sync = 0.0
        self._watermark = 0
        self._seen_ids: set[int] = set()
        self._unseen_before: set[int] = set()
        self.retention_s = retention_s
        self.mismatched_histograms = 0
        self.sequential = SequentialBook(store, drift_config.sequential)
        self.thresholds = {
            "psi_watch": drift_config.psi_watch,
            "psi_alert": drift_config.psi_alert,
            "js": drift_config.js_alert,
            "wasserstein": drift_config.wasserstein_alert,
            "ks": drift_config.ks_alert,
            "false_alarm_rate": drift_config.false_alarm_rate,
            "class_psi": drift_config.class_psi_alert,
            "confidence_shift": drift_config.confidence_shift_alert,
            "latency_p95_ratio": drift_config.latency_p95_ratio_alert,
            "error_rate": drift_config.error_rate_alert,
            "min_samples": drift_config.min_samples,
        }

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the monitor thread."""
        # Only devices with windows stored before this start have state worth loading.
        self._known_at_start = {
            (d["fleet"], d["device"]) for d in self.store.devices() if d["windows"]
        }
        self._watermark = self.store.max_window_id()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="edgedl-drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Fold in what was submitted, evaluate it once more, and stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, windows: list[StoredWindow]) -> None:
        """Hand over newly stored windows (called by ingest after each commit)."""
        if windows:
            self._inbox.put(windows)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self.cfg.evaluate_interval_s)
            try:
                self.tick()
            except Exception:  # the monitor must outlive any one bad evaluation
                log.exception("drift evaluation failed")
        try:
            self.tick()
        except Exception:
            log.exception("drift evaluation failed")

    def tick(self, now: float | None = None) -> None:
        """Fold in submitted windows, evaluate what changed, check for silent devices."""
        now = time.time() if now is None else now
        while True:
            try:
                batch = self._inbox.get_nowait()
            except queue.Empty:
                break
            for item in batch:
                self._fold(item)
        if self.cfg.read_shared_store and now - self._last_sync >= SYNC_EVERY_S:
            self._last_sync = now
            self.sync_from_store()
        evaluated = self.evaluate_dirty(now)
        if self.pipeline_health is not None:
            self.pipeline_health.evaluate(now)
        self.sequential.flush()
        if self._on_evaluated is not None and evaluated:
            self._on_evaluated(evaluated)
        if now - self._last_offline_check >= 1.0:
            self._last_offline_check = now
            self.check_offline(now)
        if self.retention_s and now - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = now
            pruned = self.store.prune(now - self.retention_s)
            if pruned:
                log.info("retention: deleted %d windows and dead letters", pruned)

    # ---------------------------------------------------------------- folding

    def sync_from_store(self) -> int:
        """Fold in windows other collectors stored in the same database; how many.

        With a shared subscription each collector receives part of every device's windows;
        reading the rest from the shared table gives each of them the whole sliding window.
        Ids are re-read ``SYNC_LAG_IDS`` below the highest seen, because PostgreSQL can make a
        transaction with lower ids visible after one with higher ids. A window folded twice
        (here and from ingest) is ignored the second time: sliding windows keep one per
        (epoch, seq).
        """
        ids = self.store.window_ids_after(max(0, self._watermark - SYNC_LAG_IDS))
        unseen_now = {i for i in ids if i not in self._seen_ids}
        # Only ids unseen at the previous sync too: this collector's own windows may be
        # committed a moment before ingest hands them over, and should not be read back.
        unseen = sorted(unseen_now & self._unseen_before)
        self._unseen_before = unseen_now - set(unseen)
        if ids:
            self._watermark = max(self._watermark, ids[-1])
        if unseen:
            for id_, payload, received_at in self.store.payloads(unseen):
                try:
                    window = decode_window(payload)
                except TelemetryError:
                    continue
                self._fold(StoredWindow(window, payload, received_at, id=id_))
        floor = self._watermark - SYNC_LAG_IDS
        if len(self._seen_ids) > 4 * SYNC_LAG_IDS:
            self._seen_ids = {i for i in self._seen_ids if i > floor}
        return len(unseen)

    def _fold(self, item: StoredWindow) -> None:
        if item.id is not None:
            self._seen_ids.add(item.id)
        w = item.window
        if (w.fleet, w.device) not in self._loaded:
            self._loaded.add((w.fleet, w.device))
            if (w.fleet, w.device) in self._known_at_start:
                self._bootstrap(w.fleet, w.device)
        for model in w.models:
            self._fold_model(w.fleet, w.device, w.epoch, w.seq, model)
        if self.pipeline_health is not None and w.pipelines:
            self.pipeline_health.fold(w)

    def _fold_model(
        self,
        fleet: str,
        device: str,
        epoch: str,
        seq: int,
        model: Any,
        sequential: bool = True,
    ) -> DeviceKey:
        key: DeviceKey = (fleet, device, model.name, model.version)
        reference = self.references.find(model.name, model.version, model.sha256)
        window = self._devices.get(key)
        if window is None or (window.reference is None and reference is not None):
            window = self._devices[key] = SlidingWindow(self.cfg.window_count, reference)
            self._fleet_devices.setdefault((fleet, model.name, model.version), {})[key] = None
        contribution, mismatched = Contribution.from_window(seq, model, window.reference, epoch)
        self.mismatched_histograms += mismatched
        baseline = self._baselines.setdefault(
            key, LatencyBaseline(self.cfg.baseline_windows, self.cfg.min_samples)
        )
        baseline.add(contribution)
        taken, evicted = window.add(contribution)
        if not taken:
            return key
        if sequential:
            self.sequential.observe(key, contribution, window.reference)
        fkey: FleetKey = (fleet, model.name, model.version)
        total = self._fleets.get(fkey)
        if total is None or self._fleet_refs.get(fkey) is not window.reference:
            total = self._fleet_total(fkey, window.reference)
        else:
            total.add(contribution)
            if evicted is not None:
                total.remove(evicted)  # its value sums are recomputed before the next judgement
        self._dirty.setdefault(key, None)
        return key

    def _fleet_members(
        self, fkey: FleetKey, reference: ReferenceModel | None
    ) -> list[Contribution]:
        """The sliding-window totals of the devices that make up a fleet total."""
        windows = (self._devices[key] for key in self._fleet_devices.get(fkey, ()))
        return [w.total for w in windows if w.reference is reference]

    def _fleet_total(self, fkey: FleetKey, reference: ReferenceModel | None) -> Contribution:
        """Rebuild a fleet total from its devices' sliding windows."""
        total = Contribution.empty(reference)
        for member in self._fleet_members(fkey, reference):
            total.add(member)
        self._fleets[fkey] = total
        self._fleet_refs[fkey] = reference
        return total

    def _bootstrap(self, fleet: str, device: str) -> None:
        """Load a device's first and last stored windows (state from before a restart)."""
        first = self.store.windows(device, self.cfg.baseline_windows, True, False, fleet)
        newest = self.store.windows(device, self.cfg.window_count, True, True, fleet)
        seen: set[int] = set()
        keys: set[DeviceKey] = set()
        for row in [*first, *reversed(newest)]:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
            try:
                w = decode_window(row["payload"])
            except TelemetryError:
                continue
            for model in w.models:
                keys.add(
                    self._fold_model(w.fleet, w.device, w.epoch, w.seq, model, sequential=False)
                )
        # The CUSUMs continue from their saved state, with every window since, in seq order.
        self.sequential.catch_up(
            fleet, device, sorted(keys), self.references, self.cfg.window_count
        )

    # ---------------------------------------------------------------- evaluation

    def evaluate_dirty(self, now: float) -> int:
        """Evaluate the device keys that changed, and the fleet totals they belong to.

        At most ``max_evaluations_per_s`` keys per second, oldest change first, so drift
        never takes more than its share of the CPU from ingest; the rest wait a tick.
        """
        budget = max(1, int(self.cfg.max_evaluations_per_s * self.cfg.evaluate_interval_s))
        dirty = list(itertools.islice(self._dirty, budget))
        for key in dirty:
            del self._dirty[key]
        fleets: set[FleetKey] = set()
        for key in dirty:
            window = self._devices[key]
            fleet, device, model, version = key
            baseline = self._baselines.get(key)
            self._judge(
                ("device", fleet, device, model, version),
                window.total,
                window.reference,
                baseline,
                now,
            )
            fleets.add((fleet, model, version))
        if self.cfg.fleet:
            for fkey in fleets:
                fleet, model, version = fkey
                total, reference = self._fleets[fkey], self._fleet_refs.get(fkey)
                if total.stale:
                    total.resum(self._fleet_members(fkey, reference))
                self._judge(("fleet", fleet, "", model, version), total, reference, None, now)
        return len(dirty) + (len(fleets) if self.cfg.fleet else 0)

    def _judge(
        self,
        key: tuple[str, str, str, str, str],
        total: Contribution,
        reference: ReferenceModel | None,
        baseline: LatencyBaseline | None,
        now: float,
    ) -> None:
        scope, fleet, device, model, version = key
        result = evaluate(total, reference, baseline, self.cfg)
        if scope == "device":
            decisions = self.sequential.decisions((fleet, device, model, version))
            result["sequential"] = [d.to_dict() for d in decisions]
        result.update(
            scope=scope,
            fleet=fleet,
            device=device or None,
            model=model,
            version=version,
            evaluated_at=now,
            thresholds=self.thresholds,
        )
        with self._lock:
            self._results[key] = result
            hist = self._history.setdefault(key, deque(maxlen=HISTORY))
            hist.append(
                {
                    "t": now,
                    **{
                        s["statistic"]: s["psi"]
                        for s in result["statistics"]
                        if s["psi"] is not None
                    },
                }
            )
        self._raise_alerts(result, now)

    def _raise_alerts(self, result: dict[str, Any], now: float) -> None:
        cfg = self.cfg
        scope, fleet, device = result["scope"], result["fleet"], result["device"]
        model, version = result["model"], result["version"]

        def observe(
            kind: str,
            metric: str,
            value: float | None,
            threshold: float,
            judged: bool,
            breached: bool | None = None,
            message: str | None = None,
        ) -> None:
            if value is None or not np.isfinite(value):
                return
            breached = judged and (abs(value) > threshold if breached is None else breached)
            if not breached and not self.alerts.open_count:
                return  # nothing to open, nothing open to resolve
            subject = AlertSubject(kind, scope, fleet, device, model, version, metric)
            where = f"{fleet}/{device}" if device else f"fleet {fleet}"
            self.alerts.observe(
                subject,
                value,
                threshold,
                breached,
                judged,
                message=message
                or f"{where}: {model} {version} {metric} = {value:.3g} (bound {threshold:g})",
                now=now,
            )

        def decided(d: dict[str, Any]) -> None:
            """Alert on a DriftDecision: value and bound are its effect (or score) and minimum."""
            sequential = d["score"] is not None
            value = d["score"] if sequential else d["effect"]
            bound = d["threshold"] if sequential else d["min_effect"]
            where = device or f"fleet {fleet}"
            observe(
                "drift",
                f"{d['test']}:{d['statistic']}",
                value,
                bound,
                d["judged"],
                breached=d["is_drift"],
                message=f"{where}: {model} {version} {d['statistic']}: {d['reason']}",
            )

        for stat in result["statistics"]:
            for d in stat["decisions"]:
                decided(d)
        for cls in result["classes"]:
            if "class_psi" in cfg.alert_on:
                decided(cls["decision"])
        for d in result.get("sequential", []):
            if "cusum" in cfg.alert_on:
                decided(d)
        for conf in result["confidence"]:
            if "confidence_shift" in cfg.alert_on:
                observe(
                    "drift",
                    f"confidence_shift:{conf['statistic']}",
                    conf["shift"],
                    cfg.confidence_shift_alert,
                    conf["judged"],
                )
        lat = result["latency"]
        if scope == "device":
            observe(
                "latency",
                "latency_p95_ratio",
                lat["ratio"],
                cfg.latency_p95_ratio_alert,
                lat["judged"],
            )
        err = result["errors"]
        observe("errors", "error_rate", err["rate"], cfg.error_rate_alert, err["judged"])

    def check_offline(self, now: float) -> None:
        """Raise an offline alert for every device silent for longer than N windows."""
        for row in self.store.devices():
            if row["last_seen"] is None:
                continue
            window_s = finite_or_none(row["window_s"]) or self.alerts_cfg.default_window_s
            limit = self.alerts_cfg.offline_after_windows * max(window_s, 0.001)
            silence = now - float(row["last_seen"])
            self.alerts.observe(
                AlertSubject(
                    "offline",
                    "device",
                    row["fleet"],
                    row["device"],
                    row["model"],
                    row["version"],
                    "silence_s",
                ),
                silence,
                limit,
                silence > limit,
                True,
                message=f"{row['fleet']}/{row['device']}: no telemetry for {silence:.0f} s",
                now=now,
            )

    # ---------------------------------------------------------------- queries

    def results(
        self,
        device: str | None = None,
        model: str | None = None,
        version: str | None = None,
        scope: str | None = None,
        fleet: str | None = None,
        history: bool = False,
    ) -> list[dict[str, Any]]:
        """The latest evaluation of every matching key (with its PSI history if asked)."""
        with self._lock:
            items = list(self._results.items())
        out = []
        for (s, f, d, m, v), result in items:
            if (scope and s != scope) or (device and d != device) or (fleet and f != fleet):
                continue
            if (model and m != model) or (version and v != version):
                continue
            if history:
                result = {**result, "history": list(self._history.get((s, f, d, m, v), []))}
            out.append(result)
        return sorted(
            out, key=lambda r: (r["scope"], r["fleet"], r["device"] or "", r["model"], r["version"])
        )
