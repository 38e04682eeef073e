"""The collector's fleet side: publish bundles, create rollouts, say who runs what."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgedl.errors import ConfigError, EdgeDLError, FleetError, KeyFileError
from edgedl.signing import key_id, load_public_key
from edgedl.telemetry import validate_id

from ..leader import Lease, LeaseHolder
from .artifacts import FolderArtifacts, inspect_upload, safe_name
from .gates import Gates, version_figures
from .planning import parse_waves, select_devices, wave_sizes
from .records import FleetRecords
from .waves import WaveController, device_reports

if TYPE_CHECKING:
    from ..service import Collector

log = logging.getLogger("edgedl.collector.fleet")

#: The lease that elects one wave controller among the collectors sharing a database.
WAVES_LEASE = "fleet-waves"


class RolloutRequest(BaseModel):
    """The body of ``POST /api/v1/rollouts`` (what ``edgedl fleet rollout`` sends)."""

    model_config = ConfigDict(extra="forbid")
    model: str
    version: str
    fleet: str | None = None
    devices: str | list[str] | None = None
    strategy: str = Field(default="bluegreen", pattern="^(bluegreen|canary|shadow)$")
    waves: str | list[str] = "1,10%,100%"
    probation_s: float | None = Field(default=None, gt=0)
    arrival_timeout_s: float | None = Field(default=None, gt=0)
    gates: dict[str, Any] = Field(default_factory=dict)
    options: dict[str, float | int | str | None] = Field(default_factory=dict)


class Fleet:
    """Artifacts, rollouts and the wave controller of one collector."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.config = collector.config.fleet
        self.artifacts = FolderArtifacts(self.config.artifacts_path)
        self.records = FleetRecords(collector.store)
        trusted: dict[str, Ed25519PublicKey] = {}
        for i, path in enumerate(self.config.trusted_keys):
            try:
                key = load_public_key(path)
            except KeyFileError as exc:
                raise ConfigError(f"fleet.trusted_keys.{i}: {exc}") from exc
            trusted[key_id(key)] = key
        self.trusted = trusted
        required = self.config.require_signature
        self.signatures_required = bool(trusted) if required is None else required
        if self.signatures_required and not trusted:
            raise ConfigError(
                "fleet.require_signature is true but no fleet.trusted_keys are listed"
            )
        store = collector.store
        holder = collector.mqtt.client_id if collector.mqtt else f"collector-{id(self)}"
        # One wave controller per database: the collectors sharing it elect it with a lease.
        self.lease = Lease(
            store.engine, store.dialect, WAVES_LEASE, holder, ttl_s=self.config.leader_lease_s
        )
        collector.metrics.fleet_leader.set_function(lambda: 1.0 if self.lease.held else 0.0)
        self.controller = WaveController(
            self.records,
            collector.store,
            publish=self._publish,
            alerts=collector.alerts,
            drift=lambda f, d, m, v: collector.monitor.results(
                device=d, model=m, version=v, scope="device", fleet=f
            ),
            tick_s=self.config.tick_s,
            lease=self.lease,
        )

    def start(self) -> None:
        """Start the wave controller (it acts while this collector holds the lease)."""
        self.lease.address = self.collector.url
        self.controller.start()

    def leader(self) -> dict[str, Any]:
        """Who runs the wave controller: the lease's holder, and whether it is this collector."""
        current: LeaseHolder | None = self.lease.current()
        return {
            "lease": self.lease.name,
            "leader": current.holder if current else None,
            "address": current.address if current else None,
            "term": current.term if current else None,
            "since": current.acquired_at if current else None,
            "expires_in_s": current.expires_in_s if current else None,
            "this_collector": self.lease.holder,
            "is_leader": self.lease.held,
            "lease_s": self.lease.ttl_s,
        }

    def stop(self) -> None:
        """Stop the wave controller."""
        self.controller.stop()

    def _publish(self, topic: str, payload: bytes, retain: bool) -> None:
        mqtt = self.collector.mqtt
        if mqtt is None:
            raise FleetError("the collector has no MQTT connection to write desired states")
        mqtt.publish(topic, payload, retain=retain)

    @property
    def base_url(self) -> str:
        """Where devices download bundles from."""
        return (self.config.public_url or self.collector.url).rstrip("/")

    def artifact_url(self, model: str, version: str) -> str:
        """The download URL of a published bundle."""
        return f"{self.base_url}/artifacts/{model}/{version}.tar"

    # ---------------------------------------------------------------- publish

    def publish(
        self, upload: Path, sha256: str, size: int, claimed_sha256: str | None
    ) -> dict[str, Any]:
        """Check an uploaded ``.tar`` and keep it; return its description (``created``)."""
        try:
            if claimed_sha256 and claimed_sha256.lower() != sha256:
                raise FleetError(
                    f"the upload's sha256 {sha256[:12]}… is not the publisher's "
                    f"{claimed_sha256[:12]}…: it was damaged on the way"
                )
            artifact = inspect_upload(upload, sha256, size, self.trusted, self.signatures_required)
            safe_name(artifact.model, "model")
            safe_name(artifact.version, "version")
            existing = self.records.artifact(artifact.model, artifact.version)
            if existing is not None:
                if existing["sha256"] != sha256:
                    raise FleetError(
                        f"{artifact.model} {artifact.version} is already published with another "
                        f"sha256 ({existing['sha256'][:12]}…); give the bundle a new version"
                    )
                return {**self._artifact_json(existing), "created": False}
            self.artifacts.put(artifact.model, artifact.version, upload)
            self.records.add_artifact(artifact)
        finally:
            upload.unlink(missing_ok=True)
        try:  # the drift monitor judges the new version against its own reference
            self.collector.references.register(artifact.manifest)
        except EdgeDLError as exc:
            log.info("no reference profile from %s %s: %s", artifact.model, artifact.version, exc)
        row = self.records.artifact(artifact.model, artifact.version)
        assert row is not None
        return {**self._artifact_json(row), "created": True}

    def _artifact_json(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            **FleetRecords.artifact_json(row),
            "url": self.artifact_url(row["model"], row["version"]),
        }

    # ---------------------------------------------------------------- rollouts

    def create_rollout(self, body: dict[str, Any]) -> dict[str, Any]:
        """Plan a rollout and hand it to the wave controller; return it."""
        try:
            req = RolloutRequest.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "body"
            raise FleetError(f"{where}: {err['msg']}") from exc
        art = self.records.artifact(req.model, req.version)
        if art is None:
            published = sorted(
                {a["version"] for a in self.records.artifacts() if a["model"] == req.model}
            )
            raise FleetError(
                f"{req.model} {req.version} is not published (published versions: "
                f"{', '.join(published) or 'none'}): edgedl fleet publish BUNDLE first"
            )
        rows = self.collector.store.devices()
        fleets = sorted({r["fleet"] for r in rows})
        fleet = req.fleet
        if fleet is None:
            if len(fleets) != 1:
                raise FleetError(
                    f"name the fleet (--fleet): devices are in {', '.join(fleets) or 'no fleet yet'}"
                )
            fleet = fleets[0]
        validate_id(fleet, "fleet")
        reports = device_reports(rows, fleet)
        devices = select_devices(list(reports), req.devices)
        for rollout in self.records.rollouts(state="running"):
            if rollout["fleet"] == fleet and rollout["model"] == req.model:
                raise FleetError(
                    f"rollout {rollout['id']} of {req.model} {rollout['version']} is still running in {fleet}"
                )
        try:
            gates = Gates(**{**self.config.gates.model_dump(), **req.gates})
        except ValidationError as exc:
            raise FleetError(f"gates: {exc.errors()[0]['msg']}") from exc
        waves = parse_waves(req.waves)
        previous: dict[str, Any] = {}
        for device in devices:
            was = reports[device]["models"].get(req.model)
            prev_art = self.records.artifact(req.model, was) if was else None
            previous[device] = (
                {
                    "version": was,
                    "artifact": {
                        "sha256": prev_art["sha256"],
                        "size_bytes": prev_art["size_bytes"],
                        "url": self.artifact_url(req.model, was),
                    }
                    if prev_art
                    else None,
                }
                if was
                else None
            )
        now = time.time()
        versions = {p["version"] for p in previous.values() if p}
        baseline = None
        if len(versions) == 1:
            recent = self.records.model_windows(
                fleet, devices, req.model, now - self.config.baseline_s
            )
            baseline = version_figures([p for _, p in recent], req.model, versions.pop()).p95_ms
        options = dict(req.options)
        if req.strategy == "bluegreen":
            options.setdefault("probation_s", req.probation_s or self.config.probation_s)
        plan = {
            "devices": devices,
            "waves": waves,
            "sizes": wave_sizes(waves, len(devices)),
            "gates": gates.model_dump(),
            "options": options,
            "probation_s": req.probation_s or self.config.probation_s,
            "arrival_timeout_s": req.arrival_timeout_s or self.config.arrival_timeout_s,
            "previous": previous,
            "baseline_p95_ms": baseline,
            "artifact": {
                "sha256": art["sha256"],
                "size_bytes": art["size_bytes"],
                "url": self.artifact_url(req.model, req.version),
            },
            "touched": [],
        }
        rid = self.records.add_rollout(fleet, req.model, req.version, req.strategy, plan)
        log.info(
            "rollout %s of %s %s to %d devices in %s",
            rid,
            req.model,
            req.version,
            len(devices),
            fleet,
        )
        self.controller.wake()
        row = self.records.rollout(rid)
        assert row is not None
        return rollout_json(row)

    def models(self) -> dict[str, Any]:
        """Published models and versions, and which devices run which version."""
        rows = self.collector.store.devices()
        out: dict[str, Any] = {}
        for row in self.records.artifacts():
            entry = out.setdefault(row["model"], {"versions": [], "devices": {}})
            entry["versions"].append(self._artifact_json(row))
        names = Counter(r["device"] for r in rows)
        shared = {n for n, count in names.items() if count > 1}
        for fleet in sorted({r["fleet"] for r in rows}):
            self._add_devices(out, fleet, device_reports(rows, fleet), shared)
        return out

    @staticmethod
    def _add_devices(
        out: dict[str, Any], fleet: str, reports: dict[str, Any], shared: set[str]
    ) -> None:
        """Add the devices of ``fleet`` under each model they run: by name, or as
        ``fleet/device`` when another fleet has a device of the same name."""
        for device, report in sorted(reports.items()):
            for model, version in report["models"].items():
                entry = out.setdefault(model, {"versions": [], "devices": {}})
                entry["devices"][f"{fleet}/{device}" if device in shared else device] = {
                    "version": version,
                    "fleet": report["fleet"],
                    "online": report["online"],
                    "rollout": report["rollout"] or None,
                }


def rollout_json(row: dict[str, Any]) -> dict[str, Any]:
    """A rollout as the API and ``edgedl fleet status`` show it."""
    plan = row["plan"]
    sizes = plan["sizes"]
    return {
        "id": row["id"],
        "fleet": row["fleet"],
        "model": row["model"],
        "version": row["version"],
        "strategy": row["strategy"],
        "state": row["state"],
        "wave": row["wave"] + 1,
        "waves": len(sizes),
        "wave_sizes": sizes,
        "phase": row["phase"],
        "phase_since": row["phase_since"],
        "reason": row["reason"],
        "devices": plan["devices"],
        "touched": plan.get("touched", []),
        "device_states": plan.get("device_states", {}),
        "wave_reports": plan.get("wave_reports", {}),
        "moves": plan.get("moves", []),
        "gates": plan["gates"],
        "probation_s": plan["probation_s"],
        "previous": {d: (p["version"] if p else None) for d, p in plan["previous"].items()},
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
