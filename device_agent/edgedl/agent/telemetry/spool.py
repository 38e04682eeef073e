"""The durable spool: telemetry windows wait on disk until the broker acknowledges them.

One SQLite file in WAL mode holds four things:

* ``windows``: encoded windows not yet acknowledged, keyed by their sequence number;
* the per-device sequence counter, so a restarted agent never reuses a number;
* the count of windows dropped past the size bound and not yet reported;
* the spool's *epoch*: a random id chosen when the file is created. Sequence numbers count
  within an epoch, so a device whose spool is lost (re-imaged, new SD card) starts a new
  epoch at seq 0 instead of repeating numbers the collector already holds. A spool created
  before epochs existed keeps the epoch ``""``, under which its windows were already sent.

Drop counts add up: the ``dropped`` figures of the windows that reach the collector sum to the
number of windows that never will (a dropped window's own report is carried to the next one).

A window is *accepted* once :meth:`Spool.enqueue` has committed it (``synchronous=FULL``,
so it survives a ``kill -9`` and a power cut). It leaves the spool only through
:meth:`Spool.remove` (after the broker's PUBACK) or when the size bound pushes it out; the
latter is counted and handed to the next window through :meth:`Spool.enqueue`, in the same
transaction that stores that window, so a crash can neither lose nor double the count.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgedl.errors import TelemetryError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    reports_dropped INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('next_seq', 0), ('dropped', 0),
    ('dropped_total', 0);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

#: Builds a window's payload from its sequence number and the windows dropped since the last.
PayloadBuilder = Callable[[int, int], bytes]


@dataclass(frozen=True)
class SpooledWindow:
    """One encoded window waiting for the broker's acknowledgement."""

    seq: int
    payload: bytes


class Spool:
    """Encoded telemetry windows on disk, oldest first, bounded in bytes and in count.

    Thread-safe: the telemetry timer enqueues while the MQTT thread removes.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 50_000_000,
        max_windows: int | None = None,
    ) -> None:
        if max_bytes <= 0 or (max_windows is not None and max_windows <= 0):
            raise TelemetryError("spool bounds must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_windows = max_windows
        self._lock = threading.RLock()  # a payload builder may ask len(spool)
        self._sending: set[int] = set()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self.epoch = self._open_epoch()
        except (OSError, sqlite3.Error) as exc:
            raise TelemetryError(f"cannot open the telemetry spool {self.path}: {exc}") from exc

    def _open_epoch(self) -> str:
        """Create the tables if needed; the spool's epoch (chosen now for a new spool)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            existed = (
                db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'counters'"
                ).fetchone()
                is not None
            )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
            if row is None:
                epoch = "" if existed else secrets.token_hex(8)
                db.execute("INSERT INTO meta (name, value) VALUES ('epoch', ?)", (epoch,))
            else:
                epoch = str(row[0])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return epoch

    def enqueue(self, build: PayloadBuilder) -> int:
        """Store the next window durably and return its sequence number.

        ``build(seq, dropped)`` makes the payload: ``seq`` is this window's number and
        ``dropped`` how many windows the size bound pushed out since the last window was
        stored. Both counters move in the transaction that stores the window. If the new
        window takes the spool over its bound, the oldest windows are dropped (and counted
        for the next window); the new one is always kept.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._counter("next_seq")
                dropped = self._counter("dropped")
                payload = build(seq, dropped)
                db.execute(
                    "INSERT INTO windows (seq, payload, size, reports_dropped) VALUES (?, ?, ?, ?)",
                    (seq, payload, len(payload), dropped),
                )
                db.execute("UPDATE counters SET value = ? WHERE name = 'next_seq'", (seq + 1,))
                db.execute("UPDATE counters SET value = 0 WHERE name = 'dropped'")
                pushed_out, unreported = self._enforce_bound()
                if pushed_out:
                    db.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped'",
                        (pushed_out + unreported,),
                    )
                    db.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped_total'",
                        (pushed_out,),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return seq

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def _enforce_bound(self) -> tuple[int, int]:
        """Delete the oldest windows (never the newest) until the bounds hold.

        Returns how many went, and the drop counts those windows carried: a dropped window
        cannot report earlier drops any more, so the next window reports them instead.
        """
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM windows"
        ).fetchone()
        if not self._over(count, size):
            return 0, 0
        pushed_out = unreported = 0
        rows = self._db.execute(
            "SELECT seq, size, reports_dropped FROM windows ORDER BY seq"
        ).fetchall()
        for seq, row_size, reports in rows[:-1]:
            if not self._over(count, size):
                break
            if seq in self._sending:
                continue  # on its way: the broker will most likely have it
            self._db.execute("DELETE FROM windows WHERE seq = ?", (seq,))
            count -= 1
            size -= row_size
            pushed_out += 1
            unreported += reports
        return pushed_out, unreported

    def _over(self, count: int, size: int) -> bool:
        return size > self.max_bytes or (self.max_windows is not None and count > self.max_windows)

    def pending(
        self, limit: int, skip: frozenset[int] | set[int] = frozenset()
    ) -> list[SpooledWindow]:
        """Up to ``limit`` windows in sequence order, leaving out the seqs in ``skip``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, payload FROM windows ORDER BY seq LIMIT ?", (limit + len(skip),)
            ).fetchall()
        out = [SpooledWindow(int(seq), bytes(payload)) for seq, payload in rows if seq not in skip]
        return out[:limit]

    def take(self, limit: int) -> list[SpooledWindow]:
        """Up to ``limit`` windows not yet taken, oldest first, marked as being sent.

        The size bound never drops a window being sent (the broker most likely has it, and
        counting it as dropped would be wrong), so the spool may hold up to the publisher's
        in-flight limit more than its bound. :meth:`remove` or :meth:`release` ends the mark.
        """
        with self._lock:
            taken = self.pending(limit, skip=self._sending)
            self._sending.update(w.seq for w in taken)
            return taken

    def release(self, seqs: set[int] | None = None) -> None:
        """These windows (all when None) were not sent after all: offer them again."""
        with self._lock:
            if seqs is None:
                self._sending.clear()
            else:
                self._sending -= seqs

    def remove(self, seq: int) -> None:
        """Forget a window the broker has acknowledged (a no-op when it is already gone)."""
        with self._lock:
            self._sending.discard(seq)
            self._db.execute("DELETE FROM windows WHERE seq = ?", (seq,))

    @property
    def next_seq(self) -> int:
        """The sequence number the next window will get."""
        with self._lock:
            return self._counter("next_seq")

    @property
    def dropped(self) -> int:
        """Windows dropped past the bound and not yet reported in a window."""
        with self._lock:
            return self._counter("dropped")

    @property
    def dropped_total(self) -> int:
        """Windows dropped past the bound over the spool's life."""
        with self._lock:
            return self._counter("dropped_total")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM windows").fetchone()[0])

    @property
    def size_bytes(self) -> int:
        """Total payload bytes waiting."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM windows").fetchone()[0])

    def close(self) -> None:
        """Close the database (the data stays on disk)."""
        with self._lock:
            self._db.close()
