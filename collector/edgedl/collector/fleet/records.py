"""The fleet's rows in the collector database: published artifacts and rollouts."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import and_, select, update

from edgedl.bundle import Manifest

from ..schema import artifacts, rollouts, windows
from ..store import Store
from .artifacts import Artifact


class FleetRecords:
    """Artifacts and rollouts in ``store``'s database (thread-safe like :class:`Store`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    # ---------------------------------------------------------------- artifacts

    def add_artifact(self, a: Artifact) -> None:
        """Record a published bundle."""
        with self.engine.begin() as conn:
            conn.execute(
                artifacts.insert().values(
                    model=a.model,
                    version=a.version,
                    sha256=a.sha256,
                    size_bytes=a.size_bytes,
                    model_sha256=a.model_sha256,
                    key_id=a.key_id,
                    manifest=a.manifest.model_dump_json(),
                    added_at=time.time(),
                )
            )

    def artifact(self, model: str, version: str) -> dict[str, Any] | None:
        """One published bundle's row, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(artifacts).where(
                    and_(artifacts.c.model == model, artifacts.c.version == version)
                )
            ).first()
            return dict(row._mapping) if row else None

    def artifacts(self) -> list[dict[str, Any]]:
        """Every published bundle, by model then arrival."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(artifacts).order_by(artifacts.c.model, artifacts.c.added_at))
            return [dict(r._mapping) for r in rows]

    @staticmethod
    def artifact_json(row: dict[str, Any]) -> dict[str, Any]:
        """An artifact row as the API shows it."""
        manifest = Manifest.model_validate_json(row["manifest"])
        return {
            "model": row["model"],
            "version": row["version"],
            "sha256": row["sha256"],
            "size_bytes": row["size_bytes"],
            "model_sha256": row["model_sha256"],
            "signed_by": row["key_id"],
            "target": manifest.target,
            "added_at": row["added_at"],
        }

    # ---------------------------------------------------------------- rollouts

    def add_rollout(
        self, fleet: str, model: str, version: str, strategy: str, plan: dict[str, Any]
    ) -> int:
        """Record a new rollout (state ``running``, first wave); return its id."""
        now = time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                rollouts.insert().values(
                    fleet=fleet,
                    model=model,
                    version=version,
                    strategy=strategy,
                    state="running",
                    wave=0,
                    phase="starting",
                    phase_since=now,
                    reason=None,
                    plan=json.dumps(plan),
                    created_at=now,
                    updated_at=now,
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            return int(key[0])

    def rollout(self, rollout_id: int) -> dict[str, Any] | None:
        """One rollout (its plan decoded), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
        return _decoded(dict(row._mapping)) if row else None

    def rollouts(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rollouts, newest first (only those in ``state`` when given)."""
        query = select(rollouts).order_by(rollouts.c.id.desc()).limit(limit)
        if state is not None:
            query = query.where(rollouts.c.state == state)
        with self.engine.connect() as conn:
            return [_decoded(dict(r._mapping)) for r in conn.execute(query)]

    def update_rollout(self, rollout_id: int, **values: Any) -> None:
        """Change a rollout's columns (``plan`` as a dict)."""
        if "plan" in values:
            values["plan"] = json.dumps(values["plan"])
        values["updated_at"] = time.time()
        with self.engine.begin() as conn:
            conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(**values))

    # ---------------------------------------------------------------- telemetry

    def model_windows(
        self, fleet: str, devices: list[str], model: str, since: float
    ) -> list[tuple[str, bytes]]:
        """``(device, payload)`` of the windows of ``devices`` of ``fleet`` that ended after
        ``since`` and served ``model`` (the gates decode them for the version they judge)."""
        if not devices:
            return []
        query = (
            select(windows.c.device, windows.c.payload)
            .where(windows.c.fleet == fleet)
            .where(windows.c.device.in_(devices))
            .where(windows.c.window_end >= since)
            .order_by(windows.c.id)
        )
        with self.engine.connect() as conn:
            return [(r.device, bytes(r.payload)) for r in conn.execute(query)]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    row["plan"] = json.loads(row["plan"])
    return row
