"""The wave controller: moves each running rollout through its waves, or halts it.

A rollout's devices are taken in waves (cumulative counts, see :func:`.planning.wave_sizes`).
For each wave the controller writes the new desired state of the wave's devices (retained,
so a device that is offline finds it when it comes back), waits until every online device of
the wave reports on ``/status`` that it runs the new version, then watches the new version's
telemetry on those devices for ``probation_s`` (:mod:`.gates`). A shadow rollout also waits
for enough shadow comparisons to judge agreement (up to ``SHADOW_EVIDENCE_PROBATIONS``
probations, then halts), then asks the wave's devices to promote and waits for them. Only then does the next wave start.

On a breach, a device refusing the version, a device rolling it back itself, or devices not
arriving in time, the rollout is halted: every device it touched gets the previous version
back as its desired state, and an alert of kind ``rollout`` is raised. When a rollout
completes, the drift, accuracy, latency and error alerts still open for the versions it
replaced are resolved (:meth:`AlertBook.retire`): those versions no longer answer there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edgedl.telemetry import DesiredState, desired_topic, encode_desired

from ..alerts import AlertBook, AlertSubject
from ..leader import Lease
from ..store import Store
from .gates import Gates, awaiting_evidence, judge, version_figures
from .records import FleetRecords

log = logging.getLogger("edgedl.collector.fleet")

Publish = Callable[[str, bytes, bool], None]
DriftResults = Callable[[str, str, str, str], list[dict[str, Any]]]  # fleet, device, model, ver
ARRIVED = ("probation", "promoted")
#: A shadow wave whose agreement gate has not judged waits this many probations, then halts.
SHADOW_EVIDENCE_PROBATIONS = 5
FAILED = ("refused", "rolled_back")


class WaveController:
    """Runs every rollout in state ``running`` (start()/stop(); one thread).

    With a ``lease``, a tick runs only in the collector that holds it (renewed before every
    tick): of several collectors on one database, one moves the rollouts; the others take
    over when it dies. Every move of a rollout is recorded in its plan's ``moves`` with the
    collector that made it and the lease's term.
    """

    def __init__(
        self,
        records: FleetRecords,
        store: Store,
        publish: Publish,
        alerts: AlertBook,
        drift: DriftResults,
        tick_s: float = 0.5,
        lease: Lease | None = None,
    ) -> None:
        self.records = records
        self.store = store
        self.publish = publish
        self.alerts = alerts
        self.drift = drift
        self.tick_s = tick_s
        self.lease = lease
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the controller thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="edgedl-waves", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the tick in hand."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout=10)
        if self.lease is not None:
            self.lease.release()

    def wake(self) -> None:
        """Tick now (a rollout was created)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.lease is None or self.lease.hold():
                    self.tick()
            except Exception:  # a bad row must not stop every other rollout
                log.exception("fleet: a rollout tick failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    # ---------------------------------------------------------------- one tick

    def tick(self, now: float | None = None) -> None:
        """Advance every running rollout as far as its devices allow."""
        running = self.records.rollouts(state="running")
        if not running:
            return
        rows = self.store.devices()
        for rollout in running:
            reports = device_reports(rows, rollout["fleet"])
            self.advance(rollout, reports, time.time() if now is None else now)

    def advance(self, r: dict[str, Any], reports: dict[str, dict[str, Any]], now: float) -> None:
        """One step of one rollout (see the module docstring)."""
        plan = r["plan"]
        rid, model, version = int(r["id"]), r["model"], r["version"]
        wave_devices = plan["devices"][: plan["sizes"][r["wave"]]]
        plan["device_states"] = {d: _state_of(reports.get(d), rid) for d in plan["devices"]}
        for device in wave_devices:
            state = plan["device_states"][device]
            if state["state"] in FAILED and state["version"] == version:
                why = state.get("reason") or state["state"]
                self.halt(r, f"device {device} {state['state'].replace('_', ' ')} {version}: {why}")
                return
        online = [d for d in wave_devices if reports.get(d, {}).get("online", False)]
        phase = r["phase"]
        if phase == "starting":
            self._write_desired(r, wave_devices, promote=False)
            self._move(r, phase="arriving", phase_since=now)
            return
        if phase in ("arriving", "promoting"):
            want = ("promoted",) if phase == "promoting" else ARRIVED
            waiting = [d for d in online if not _arrived(plan["device_states"][d], version, want)]
            if not waiting and any(
                _arrived(plan["device_states"][d], version, want) for d in wave_devices
            ):
                if phase == "promoting":
                    self._next_wave(r, now)
                else:
                    self._move(r, phase="probation", phase_since=now)
            elif now - float(r["phase_since"]) > plan["arrival_timeout_s"]:
                what = "promote" if phase == "promoting" else "start"
                self.halt(
                    r,
                    f"devices {', '.join(waiting) or ', '.join(wave_devices)} did not {what} "
                    f"{version} within {plan['arrival_timeout_s']:g} s",
                )
            else:
                self.records.update_rollout(rid, plan=plan)
            return
        # probation: judge the new version on the devices that run it
        arrived = [d for d in wave_devices if _arrived(plan["device_states"][d], version, ARRIVED)]
        fleet = r["fleet"]
        payloads = [
            p for _, p in self.records.model_windows(fleet, arrived, model, float(r["phase_since"]))
        ]
        figures = version_figures(payloads, model, version)
        drift = [
            res
            for d in arrived
            for res in self.drift(fleet, d, model, version)
            if res.get("device") == d
        ]
        shadow = {
            d: plan["device_states"][d]["shadow"]
            for d in arrived
            if plan["device_states"][d].get("shadow")
        }
        breach, report = judge(
            Gates(**plan["gates"]), figures, plan.get("baseline_p95_ms"), drift, shadow
        )
        plan.setdefault("wave_reports", {})[str(r["wave"])] = report
        if breach is not None:
            self.halt(r, f"wave {r['wave'] + 1} ({', '.join(arrived)}): {breach}")
            return
        if now - float(r["phase_since"]) < plan["probation_s"]:
            self.records.update_rollout(rid, plan=plan)
            return
        if r["strategy"] == "shadow":
            missing = awaiting_evidence(Gates(**plan["gates"]), report)
            if missing is not None:
                waited = now - float(r["phase_since"])
                limit = plan["probation_s"] * SHADOW_EVIDENCE_PROBATIONS
                if waited < limit:
                    self.records.update_rollout(rid, plan=plan)
                else:
                    self.halt(r, f"wave {r['wave'] + 1} ({', '.join(arrived)}): {missing} "
                                 f"within {limit:g} s")  # fmt: skip
                return
        report["passed_at"] = now
        if r["strategy"] == "shadow":
            self._write_desired(r, wave_devices, promote=True)
            self._move(r, phase="promoting", phase_since=now)
        else:
            self._next_wave(r, now)

    def _next_wave(self, r: dict[str, Any], now: float) -> None:
        plan = r["plan"]
        if r["wave"] + 1 >= len(plan["sizes"]):
            r["state"] = "completed"
            self._move(
                r, state="completed", phase="done", phase_since=now, reason="every wave passed"
            )
            log.info("rollout %s of %s %s completed", r["id"], r["model"], r["version"])
            self._retire_replaced(r, now)
            return
        r["wave"] += 1
        # Only the devices the wave adds: the earlier ones keep their (promoted) state.
        devices = plan["devices"][plan["sizes"][r["wave"] - 1] : plan["sizes"][r["wave"]]]
        self._write_desired(r, devices, promote=False)
        self._move(r, wave=r["wave"], phase="arriving", phase_since=now)

    def _retire_replaced(self, r: dict[str, Any], now: float) -> None:
        """Resolve the alerts of the versions a completed rollout replaced: on its devices,
        and fleet-wide for a version that no device of the fleet outside it still runs."""
        replaced = {
            device: prev["version"]
            for device, prev in r["plan"]["previous"].items()
            if prev and prev.get("version") and prev["version"] != r["version"]
        }
        if not replaced:
            return
        others = device_reports(self.store.devices(), r["fleet"])
        still = {
            v
            for device, report in others.items()
            if device not in r["plan"]["devices"]
            for name, v in report["models"].items()
            if name == r["model"]
        }
        for alert in self.alerts.retire(
            r["fleet"], r["model"], replaced, set(replaced.values()) - still, now=now
        ):
            log.info(
                "rollout %s replaced %s %s: alert %s (%s %s) resolved",
                r["id"], r["model"], alert["version"], alert["id"], alert["kind"], alert["metric"],
            )  # fmt: skip

    def _move(self, r: dict[str, Any], **values: Any) -> None:
        r.update(values)
        lease = self.lease
        r["plan"].setdefault("moves", []).append(
            {
                "at": time.time(),
                "wave": r["wave"],
                "phase": r["phase"],
                "state": r["state"],
                "by": lease.holder if lease else None,
                "term": lease.term if lease else None,
            }
        )
        self.records.update_rollout(int(r["id"]), plan=r["plan"], **values)

    # ---------------------------------------------------------------- desired states

    def _write_desired(self, r: dict[str, Any], devices: list[str], promote: bool) -> None:
        plan = r["plan"]
        art = plan["artifact"]
        touched = plan.setdefault("touched", [])
        for device in devices:
            state = DesiredState(
                rollout_id=int(r["id"]),
                model=r["model"],
                version=r["version"],
                sha256=art["sha256"],
                size_bytes=art["size_bytes"],
                url=art["url"],
                strategy=r["strategy"],
                options=plan["options"],
                promote=promote,
                reason=f"rollout {r['id']}, wave {r['wave'] + 1}",
                issued_at=time.time(),
            )
            self.publish(desired_topic(r["fleet"], device), encode_desired(state), True)
            if device not in touched:
                touched.append(device)

    def halt(self, r: dict[str, Any], reason: str) -> None:
        """Stop a rollout: the previous version back on every touched device, an alert."""
        plan = r["plan"]
        rid = int(r["id"])
        for device in plan.get("touched", []):
            previous = plan["previous"].get(device)
            topic = desired_topic(r["fleet"], device)
            if previous is None:
                self.publish(topic, b"", True)  # nothing to go back to: no desired state
                continue
            art = previous.get("artifact") or {}
            state = DesiredState(
                rollout_id=rid,
                model=r["model"],
                version=previous["version"],
                sha256=art.get("sha256"),
                size_bytes=art.get("size_bytes"),
                url=art.get("url"),
                strategy="bluegreen",
                promote=True,
                reason=f"rollout {rid} halted: {reason}"[:500],
                issued_at=time.time(),
            )
            self.publish(topic, encode_desired(state), True)
        self._move(r, state="halted", phase="halted", phase_since=time.time(), reason=reason[:1000])
        log.warning("rollout %s of %s %s halted: %s", rid, r["model"], r["version"], reason)
        self.alerts.observe(
            AlertSubject(
                kind="rollout",
                scope="fleet",
                fleet=r["fleet"],
                device=None,
                model=r["model"],
                version=r["version"],
                metric=f"rollout/{rid}",
            ),
            value=1.0,
            threshold=0.0,
            breached=True,
            message=f"rollout {rid} of {r['model']} {r['version']} halted: {reason}",
        )


def device_reports(rows: list[dict[str, Any]], fleet: str) -> dict[str, dict[str, Any]]:
    """``{device: {"online", "models": {name: version}, "rollout": {...}}}`` from the device
    rows of ``fleet`` (device names are unique within a fleet, not across fleets)."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["fleet"] != fleet:
            continue
        status = json.loads(row["status"]) if row.get("status") else {}
        models = {m["name"]: m["version"] for m in status.get("models", [])}
        if not models and row.get("model"):
            models = {row["model"]: row.get("version")}
        # During a rollout both versions are loaded: the updater says which one answers.
        models.update((status.get("rollout") or {}).get("serving") or {})
        # A window received after the status outranks it (a stale or forged "offline").
        seen, said_at = row.get("last_seen"), row.get("status_received_at")
        later = seen is not None and said_at is not None and float(seen) > float(said_at)
        out[row["device"]] = {
            "fleet": row["fleet"],
            "online": bool(status.get("online", row.get("online"))) or later,
            "models": models,
            "rollout": status.get("rollout") or {},
        }
    return out


def _state_of(report: dict[str, Any] | None, rollout_id: int) -> dict[str, Any]:
    if report is None:
        return {"state": "unknown", "version": None, "online": False}
    rollout = report.get("rollout") or {}
    state: dict[str, Any] = {"online": report["online"], "serving": report["models"]}
    if rollout.get("rollout_id") == rollout_id:
        state.update(
            state=rollout.get("state"),
            version=rollout.get("version"),
            reason=rollout.get("reason"),
            shadow=rollout.get("shadow"),
        )
    else:
        state.update(state="pending", version=None)
    return state


def _arrived(state: dict[str, Any], version: str, want: tuple[str, ...]) -> bool:
    return state.get("version") == version and state.get("state") in want
