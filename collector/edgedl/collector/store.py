"""Storage of windows, devices, dead letters, alerts and references (SQLite or PostgreSQL).

One :class:`Store` per collector. ``sqlite:///path.db`` opens SQLite in WAL mode;
``postgresql://user@host/db`` opens PostgreSQL through psycopg 3. Both get the same schema
(:mod:`edgedl.collector.schema`) and the same statements: inserts of windows use
``INSERT … ON CONFLICT (fleet, device, epoch, seq) DO NOTHING``, so a redelivered window is
stored once. A device is ``(fleet, device)`` everywhere; its spool epochs (lives) give the
windows missing between the first and last seq of each (:mod:`.lives`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, case, create_engine, event, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from edgedl.errors import ConfigError, EdgeDLError

from . import lives, schema
from .accuracy import confusion_rows
from .batch import Committed, DeadLetter, ReceivedStatus, StoredWindow, WindowKey, window_key
from .direct_labels import claim_agent_labels
from .schema import (
    accuracy_estimates,
    alerts,
    dead_letter,
    device_epochs,
    devices,
    drift_sequential,
    label_confusion,
    labelled_predictions,
    model_references,
    pipeline_references,
    windows,
)

DeviceKey = tuple[str, str]  # fleet, device

__all__ = [
    "AmbiguousDevice",
    "Committed",
    "DeadLetter",
    "ReceivedStatus",
    "StorageError",
    "Store",
    "StoredWindow",
]


class StorageError(EdgeDLError):
    """The database cannot be opened or written."""


class AmbiguousDevice(EdgeDLError):
    """A device named without its fleet, and several fleets have a device of that name."""


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a user's database URL (``postgresql://`` uses psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///") or url.startswith("postgresql+psycopg://"):
        return url
    raise ConfigError(
        f"storage.url: unsupported database URL {url!r} (sqlite:///path.db or postgresql://...)"
    )


class Store:
    """The collector's database. Thread-safe: every method opens its own transaction."""

    def __init__(self, url: str, max_seq_jump: int = 100_000) -> None:
        self.url = url
        self.max_seq_jump = max_seq_jump
        self._spans = lives.SeqSpans(max_seq_jump)
        sa_url = engine_url(url)
        self.dialect = "sqlite" if sa_url.startswith("sqlite") else "postgresql"
        try:
            if self.dialect == "sqlite":
                self.engine: Engine = create_engine(
                    sa_url, connect_args={"check_same_thread": False, "timeout": 30}
                )
                event.listen(self.engine, "connect", _sqlite_pragmas)
            else:
                self.engine = create_engine(sa_url, pool_size=4, pool_pre_ping=True)
            with self.engine.begin() as conn:
                self.schema_version = schema.migrate(conn)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open database {_redact(url)}: {_first_line(exc)}") from exc
        self.write_lock = threading.Lock()
        self.insert = _insert_for(self.dialect)
        self._window_insert = (
            self.insert(windows)
            .on_conflict_do_nothing(index_elements=["fleet", "device", "epoch", "seq"])
            .returning(
                windows.c.id, windows.c.fleet, windows.c.device, windows.c.epoch, windows.c.seq
            )
        )

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    # ---------------------------------------------------------------- ingest

    def commit_batch(
        self,
        batch: Sequence[StoredWindow],
        statuses: Sequence[ReceivedStatus] = (),
        dead: Sequence[DeadLetter] = (),
    ) -> Committed:
        """Store a batch in one transaction: the windows that were new (ids set), and those
        refused (stored as dead letters with the others): a seq more than ``max_seq_jump``
        from its epoch's seqs, or a window whose key is stored with a different payload.

        A window whose ``(fleet, device, epoch, seq)`` is stored with the same payload is a
        duplicate (a redelivery) and is left out silently.
        """
        inserted: list[StoredWindow] = []
        refused: list[DeadLetter] = []
        # SQLite allows one writer; serialising here avoids 'database is locked' retries.
        with self.write_lock:
            with self.engine.begin() as conn:
                if batch:
                    inserted = self._insert_windows(conn, batch, refused)
                    # Windows of a device's newest epoch are counted on its devices row;
                    # only the rare others (a late window of an earlier life) touch
                    # device_epochs here.
                    earlier = self._upsert_devices(conn, inserted)
                    if earlier:
                        lives.upsert_epochs(conn, self.insert, earlier)
                    cells = confusion_rows(inserted)
                    if cells:
                        conn.execute(label_confusion.insert(), cells)
                        claim_agent_labels(conn, self.insert, inserted)
                for st in statuses:
                    self._upsert_status(conn, st)
                if dead or refused:
                    conn.execute(dead_letter.insert(), [_dead_row(d) for d in [*dead, *refused]])
            # Committed: what was stored now counts for the seq checks of the next batches.
            self._spans.commit(inserted)
        return Committed(inserted, refused)

    def _insert_windows(
        self, conn: Any, batch: Sequence[StoredWindow], refused: list[DeadLetter]
    ) -> list[StoredWindow]:
        """Insert the plausible windows of a batch; those that were new, in arrival order."""
        by_key: dict[WindowKey, StoredWindow] = {}
        for item in self._spans.plausible(conn, batch, refused):
            first = by_key.setdefault(window_key(item.window), item)
            if first is not item and first.payload != item.payload:
                refused.append(lives.conflict(item))
        if not by_key:
            return []
        # One cached statement, executemany: SQLAlchemy batches it into multi-row
        # INSERT ... RETURNING ("insertmanyvalues") in both dialects.
        result = conn.execute(self._window_insert, [_window_row(w) for w in by_key.values()])
        inserted: list[StoredWindow] = []
        for row in result:
            item = by_key[(row.fleet, row.device, row.epoch, row.seq)]
            item.id = int(row.id)
            inserted.append(item)
        if len(inserted) < len(by_key):
            new = {id(item) for item in inserted}
            lives.conflicts(conn, [w for w in by_key.values() if id(w) not in new], refused)
        return sorted(inserted, key=lambda item: item.id or 0)

    def _upsert_devices(self, conn: Any, inserted: Sequence[StoredWindow]) -> list[StoredWindow]:
        """Upsert the devices of newly stored windows, counting the windows of each device's
        newest epoch on its row; return the windows of other epochs (to count elsewhere)."""
        per_device: dict[DeviceKey, dict[str, Any]] = {}
        for item in inserted:
            w = item.window
            row = per_device.get((w.fleet, w.device))
            first = w.models[0] if w.models else None
            if row is None:
                row = per_device[(w.fleet, w.device)] = {
                    "device": w.device,
                    "fleet": w.fleet,
                    "first_seen": item.received_at,
                    "last_seen": item.received_at,
                    "epoch": w.epoch,
                    "last_seq": w.seq,
                    "window_s": max(w.window_end - w.window_start, 0.0),
                    "model": first.name if first else None,
                    "version": first.version if first else None,
                    "agent_version": w.agent_version,
                    "inferences": 0,
                    "windows": 0,
                }
            row["inferences"] += w.inferences
            row["windows"] += 1
            row["last_seen"] = max(row["last_seen"], item.received_at)
            # The newest window of the device: a later seq of its epoch, or a new epoch.
            if w.epoch != row["epoch"] or w.seq >= row["last_seq"]:
                row["epoch"] = w.epoch
                row["last_seq"] = w.seq
                row["window_s"] = max(w.window_end - w.window_start, 0.0)
                row["model"] = first.name if first else row["model"]
                row["version"] = first.version if first else row["version"]
                row["agent_version"] = w.agent_version
        if not per_device:
            return []
        earlier: list[StoredWindow] = []
        for item in inserted:
            w = item.window
            row = per_device[(w.fleet, w.device)]
            if w.epoch != row["epoch"]:
                earlier.append(item)
                continue
            if "epoch_windows" not in row:
                row.update(
                    epoch_first_seq=w.seq,
                    epoch_windows=0,
                    epoch_inferences=0,
                    epoch_first_seen=item.received_at,
                    epoch_last_seen=item.received_at,
                )
            row["epoch_first_seq"] = min(row["epoch_first_seq"], w.seq)
            row["epoch_windows"] += 1
            row["epoch_inferences"] += w.inferences
            row["epoch_first_seen"] = min(row["epoch_first_seen"], item.received_at)
            row["epoch_last_seen"] = max(row["epoch_last_seen"], item.received_at)
        stmt = self.insert(devices)
        new, old = stmt.excluded, devices.c
        newer = (new.epoch != func.coalesce(old.epoch, "")) | (
            new.last_seq >= func.coalesce(old.last_seq, -1)
        )
        same = new.epoch == old.epoch  # NULL (a device known by its status only): not same

        def latest(col: str) -> Any:
            return case((newer, new[col]), else_=old[col])

        def epoch_total(col: str) -> Any:
            return case((same, old[col] + new[col]), else_=new[col])

        def epoch_bound(col: str, pick: Any) -> Any:
            # NULL before the first window counted on the row (a database from before them).
            kept = func.coalesce(old[col], new[col])
            return case((same, case((pick(new[col], kept), new[col]), else_=kept)), else_=new[col])

        stmt = stmt.on_conflict_do_update(
            index_elements=["fleet", "device"],
            set_={
                "last_seen": case(
                    (
                        stmt.excluded.last_seen > func.coalesce(devices.c.last_seen, 0.0),
                        stmt.excluded.last_seen,
                    ),
                    else_=devices.c.last_seen,
                ),
                "epoch": latest("epoch"),
                "last_seq": latest("last_seq"),
                "window_s": latest("window_s"),
                # A heartbeat window (no model served in it) leaves model and version as they were.
                "model": func.coalesce(latest("model"), devices.c.model),
                "version": func.coalesce(latest("version"), devices.c.version),
                "agent_version": latest("agent_version"),
                "inferences": devices.c.inferences + stmt.excluded.inferences,
                "windows": devices.c.windows + stmt.excluded.windows,
                # A new epoch resets them (the trigger first adds the old ones to its row).
                "epoch_windows": epoch_total("epoch_windows"),
                "epoch_inferences": epoch_total("epoch_inferences"),
                "epoch_first_seq": epoch_bound("epoch_first_seq", lambda a, b: a < b),
                "epoch_first_seen": epoch_bound("epoch_first_seen", lambda a, b: a < b),
                "epoch_last_seen": epoch_bound("epoch_last_seen", lambda a, b: a > b),
            },
        )
        conn.execute(stmt, list(per_device.values()))
        return earlier

    def _upsert_status(self, conn: Any, st: ReceivedStatus) -> None:
        s = st.status
        row = {
            "device": s.device,
            "fleet": s.fleet,
            "first_seen": st.received_at,
            "online": s.online,
            "status_since": s.since,
            "agent_version": s.agent_version,
            "status": s.model_dump_json(exclude_none=True),
            "status_received_at": st.received_at,
            "inferences": 0,
            "windows": 0,
        }
        stmt = self.insert(devices).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["fleet", "device"],
            set_={
                "online": stmt.excluded.online,
                "status_since": stmt.excluded.status_since,
                "status": stmt.excluded.status,
                "status_received_at": stmt.excluded.status_received_at,
            },
        )
        conn.execute(stmt)

    # ---------------------------------------------------------------- queries

    def devices(self) -> list[dict[str, Any]]:
        """Every device, as stored, with ``epochs`` (lives) and ``missing`` (windows)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.fleet, devices.c.device))
            out = [dict(r._mapping) for r in rows]
            by_device: dict[DeviceKey, list[Any]] = {}
            for life in conn.execute(select(device_epochs)):
                by_device.setdefault((life.fleet, life.device), []).append(life._mapping)
        for row in out:
            stored = by_device.get((row["fleet"], row["device"]), [])
            found = lives.with_current_epoch(row, stored)
            lives.add_lives(row, [lives.life(life) for life in found])
        return out

    def device(self, device: str, fleet: str | None = None) -> dict[str, Any] | None:
        """One device (with its ``epochs`` and ``missing``), or None.

        Without ``fleet``, the device of that name if only one fleet has one; raises
        :class:`AmbiguousDevice` when several do.
        """
        q = select(devices).where(devices.c.device == device)
        if fleet is not None:
            q = q.where(devices.c.fleet == fleet)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q.order_by(devices.c.fleet))]
            if len(rows) > 1:
                fleets = ", ".join(r["fleet"] for r in rows)
                raise AmbiguousDevice(
                    f"device {device!r} is in several fleets ({fleets}): name the fleet"
                )
            if not rows:
                return None
            row = rows[0]
            e = device_epochs.c
            found = conn.execute(
                select(device_epochs)
                .where(and_(e.fleet == row["fleet"], e.device == device))
                .order_by(e.first_seen)
            )
            merged = lives.with_current_epoch(row, [life._mapping for life in found])
            lives.add_lives(row, [lives.life(life) for life in merged])
        return row

    def windows(
        self,
        device: str | None = None,
        limit: int = 100,
        with_payload: bool = False,
        newest_first: bool = True,
        fleet: str | None = None,
        after_seq: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored windows of a device (or of a fleet, or of all), newest first by default.

        Newest means last stored: seqs restart with each epoch of a device. ``after_seq``
        keeps only windows with a higher seq.
        """
        cols = [c for c in windows.c if with_payload or c.name != "payload"]
        q = select(*cols)
        if device is not None:
            q = q.where(windows.c.device == device)
        if fleet is not None:
            q = q.where(windows.c.fleet == fleet)
        if after_seq is not None:
            q = q.where(windows.c.seq > after_seq)
        order = windows.c.id
        q = q.order_by(order.desc() if newest_first else order.asc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def count_windows(self, device: str | None = None, fleet: str | None = None) -> int:
        """How many windows are stored (for one device, or in all)."""
        q = select(func.count()).select_from(windows)
        if device is not None:
            q = q.where(windows.c.device == device)
        if fleet is not None:
            q = q.where(windows.c.fleet == fleet)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def max_window_id(self) -> int:
        """The highest window id stored (0 when none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(windows.c.id), 0))).scalar_one())

    def window_ids_after(self, after: int, limit: int = 100_000) -> list[int]:
        """Ids of windows above ``after``, ascending."""
        q = select(windows.c.id).where(windows.c.id > after).order_by(windows.c.id).limit(limit)
        with self.engine.connect() as conn:
            return [int(r.id) for r in conn.execute(q)]

    def payloads(self, ids: Sequence[int]) -> list[tuple[int, bytes, float]]:
        """``(id, payload, received_at)`` of these windows."""
        out: list[tuple[int, bytes, float]] = []
        with self.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                q = select(windows.c.id, windows.c.payload, windows.c.received_at).where(
                    windows.c.id.in_(ids[i : i + 500])
                )
                out.extend(
                    (int(r.id), bytes(r.payload), float(r.received_at)) for r in conn.execute(q)
                )
        return out

    def window_keys(self) -> list[tuple[str, int]]:
        """Every stored ``(device, seq)``: for tests and audits."""
        with self.engine.connect() as conn:
            return [
                (r.device, int(r.seq))
                for r in conn.execute(select(windows.c.device, windows.c.seq))
            ]

    def window_identities(self) -> list[tuple[str, str, str, int]]:
        """Every stored ``(fleet, device, epoch, seq)``: for tests and audits."""
        w = windows.c
        with self.engine.connect() as conn:
            return [
                (r.fleet, r.device, r.epoch, int(r.seq))
                for r in conn.execute(select(w.fleet, w.device, w.epoch, w.seq))
            ]

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters."""
        q = select(dead_letter).order_by(dead_letter.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def count_dead_letters(self) -> int:
        """How many messages were refused."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(dead_letter)).scalar_one())

    def prune(self, before: float) -> int:
        """Delete windows and dead letters received before ``before``; how many rows went."""
        with self.write_lock, self.engine.begin() as conn:
            gone = conn.execute(windows.delete().where(windows.c.received_at < before)).rowcount
            for derived in (label_confusion, accuracy_estimates):
                conn.execute(derived.delete().where(derived.c.window_end < before))
            conn.execute(
                labelled_predictions.delete().where(labelled_predictions.c.received_at < before)
            )
            gone += conn.execute(
                dead_letter.delete().where(dead_letter.c.received_at < before)
            ).rowcount
        return int(gone or 0)

    # ---------------------------------------------------------------- alerts

    def open_alert(self, alert: dict[str, Any]) -> int | None:
        """Insert an open alert unless one with its ``open_key`` is open; its id or None."""
        stmt = (
            self.insert(alerts)
            .values(alert)
            .on_conflict_do_nothing(index_elements=["open_key"])
            .returning(alerts.c.id)
        )
        with self.write_lock, self.engine.begin() as conn:
            row = conn.execute(stmt).first()
            return int(row.id) if row else None

    def resolve_alert(self, open_key: str, value: float, at: float) -> dict[str, Any] | None:
        """Mark the open alert with this key resolved; the alert, or None if none was open."""
        stmt = (
            update(alerts)
            .where(alerts.c.open_key == open_key)
            .values(open_key=None, state="resolved", resolved_at=at)
            .returning(*alerts.c)
        )
        with self.write_lock, self.engine.begin() as conn:
            row = conn.execute(stmt).first()
            return dict(row._mapping) if row else None

    def alerts(
        self, state: str | None = None, limit: int = 500, fleet: str | None = None
    ) -> list[dict[str, Any]]:
        """Alerts, newest first, optionally only ``open`` or ``resolved`` ones, of one fleet."""
        q = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
        if state:
            q = q.where(alerts.c.state == state)
        if fleet is not None:
            q = q.where(alerts.c.fleet == fleet)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def acknowledge_alert(self, alert_id: int, at: float) -> dict[str, Any] | None:
        """Mark an alert acknowledged (the first time counts); the alert, or None if no such."""
        c = alerts.c
        with self.write_lock, self.engine.begin() as conn:
            conn.execute(
                update(alerts)
                .where(c.id == alert_id, c.acknowledged_at.is_(None))
                .values(acknowledged_at=at)
            )
            row = conn.execute(select(alerts).where(c.id == alert_id)).first()
            return dict(row._mapping) if row else None

    def open_alert_keys(self) -> set[str]:
        """Keys of the alerts open now."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(alerts.c.open_key).where(alerts.c.open_key.is_not(None)))
            return {str(r.open_key) for r in rows}

    # ---------------------------------------------------------------- references

    def add_reference(
        self, sha256: str, model: str, version: str, manifest: dict[str, Any]
    ) -> None:
        """Store (or replace) the manifest of a model version."""
        row = {
            "sha256": sha256,
            "model": model,
            "version": version,
            "manifest": json.dumps(manifest),
            "added_at": time.time(),
        }
        stmt = self.insert(model_references).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["sha256"],
            set_={k: stmt.excluded[k] for k in ("model", "version", "manifest", "added_at")},
        )
        with self.write_lock, self.engine.begin() as conn:
            conn.execute(stmt)

    def add_pipeline_reference(self, pipeline: str, profile: dict[str, Any]) -> None:
        """Store (or replace) the stage-health reference profile of a pipeline."""
        row = {"pipeline": pipeline, "profile": json.dumps(profile), "added_at": time.time()}
        stmt = self.insert(pipeline_references).values(row)
        stmt = stmt.on_conflict_do_update(
            index_elements=["pipeline"],
            set_={k: stmt.excluded[k] for k in ("profile", "added_at")},
        )
        with self.write_lock, self.engine.begin() as conn:
            conn.execute(stmt)

    def pipeline_references(self) -> list[dict[str, Any]]:
        """Every stored pipeline profile: pipeline, profile (parsed), added_at."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(pipeline_references).order_by(pipeline_references.c.pipeline)
            )
            return [{**dict(r._mapping), "profile": json.loads(r.profile)} for r in rows]

    def references(self) -> list[dict[str, Any]]:
        """Every stored reference: sha256, model, version, manifest (parsed), added_at."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(model_references).order_by(model_references.c.added_at))
            return [{**dict(r._mapping), "manifest": json.loads(r.manifest)} for r in rows]

    def reference(self, sha256: str | None, model: str, version: str) -> dict[str, Any] | None:
        """The manifest for a model version: by sha256 first, else the newest by name/version."""
        with self.engine.connect() as conn:
            row = None
            if sha256:
                row = conn.execute(
                    select(model_references).where(model_references.c.sha256 == sha256)
                ).first()
            if row is None:
                row = conn.execute(
                    select(model_references)
                    .where(
                        and_(
                            model_references.c.model == model, model_references.c.version == version
                        )
                    )
                    .order_by(model_references.c.added_at.desc())
                ).first()
            return json.loads(row.manifest) if row else None

    # ---------------------------------------------------------------- sequential drift

    def sequential_state(
        self, fleet: str, device: str, model: str, version: str
    ) -> dict[str, Any] | None:
        """The saved CUSUM state of a device and model version, or None."""
        t = drift_sequential
        with self.engine.connect() as conn:
            row = conn.execute(
                select(t.c.state).where(
                    and_(
                        t.c.fleet == fleet,
                        t.c.device == device,
                        t.c.model == model,
                        t.c.version == version,
                    )
                )
            ).first()
        return dict(json.loads(row.state)) if row else None

    def save_sequential_states(
        self, states: Sequence[tuple[tuple[str, str, str, str], dict[str, Any]]]
    ) -> None:
        """Save (insert or replace) CUSUM states, keyed by (fleet, device, model, version)."""
        now = time.time()
        rows = [
            {
                "fleet": f,
                "device": d,
                "model": m,
                "version": v,
                "state": json.dumps(state),
                "updated_at": now,
            }
            for (f, d, m, v), state in states
        ]
        stmt = self.insert(drift_sequential)
        stmt = stmt.on_conflict_do_update(
            index_elements=["fleet", "device", "model", "version"],
            set_={"state": stmt.excluded.state, "updated_at": stmt.excluded.updated_at},
        )
        with self.write_lock, self.engine.begin() as conn:
            conn.execute(stmt, rows)


def _dead_row(d: DeadLetter) -> dict[str, Any]:
    return {
        "topic": d.topic[:300],
        "reason": d.reason[:500],
        "payload": d.payload[:1024],
        "payload_size": len(d.payload),
        "received_at": d.received_at,
    }


def _window_row(item: StoredWindow) -> dict[str, Any]:
    w = item.window
    first = w.models[0] if w.models else None
    p50, p95, p99 = item.latency_ms
    return {
        "device": w.device,
        "fleet": w.fleet,
        "epoch": w.epoch,
        "seq": w.seq,
        "window_start": w.window_start,
        "window_end": w.window_end,
        "received_at": item.received_at,
        "model": first.name if first else None,
        "version": first.version if first else None,
        "requests": sum(m.counts.requests for m in w.models),
        "inferences": w.inferences,
        "errors": sum(m.counts.errors for m in w.models),
        "latency_p50_ms": p50,
        "latency_p95_ms": p95,
        "latency_p99_ms": p99,
        "payload": item.payload,
    }


def _insert_for(dialect: str) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    return sqlite.insert if dialect == "sqlite" else postgresql.insert


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
