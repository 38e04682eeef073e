"""The lives of a device: its spool epochs, their seq ranges, and what is refused in them.

A device's windows are numbered by ``seq`` within a spool *epoch* (a random id the agent
picks when it creates its spool). Per epoch the collector keeps the first and last seq seen
and how many windows arrived, so the windows missing in between are a number: the current
epoch's counters on the device's ``devices`` row (one row written per device and batch), the
earlier epochs' in ``device_epochs``, where a trigger adds the row's counters when the
device's epoch changes (:mod:`.schema`, migration 8); :func:`with_current_epoch` adds the two.
Before a batch is stored, :func:`plausible` refuses a seq more than ``max_seq_jump`` away
from what its epoch has seen, and :func:`conflicts` tells a redelivery (same payload) from a
different window under a key that is taken (a forgery, or a spool restored from a backup).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, select, tuple_

from edgedl.telemetry import telemetry_topic

from .batch import DeadLetter, StoredWindow, window_key
from .schema import device_epochs, devices, windows

EpochKey = tuple[str, str, str]  # fleet, device, epoch


def conflicts(conn: Any, repeated: list[StoredWindow], refused: list[DeadLetter]) -> None:
    """Refuse the repeated keys whose stored payload differs: not a redelivery."""
    w = windows.c
    keys = [window_key(item.window) for item in repeated]
    stored = {
        (r.fleet, r.device, r.epoch, int(r.seq)): bytes(r.payload)
        for r in conn.execute(
            select(w.fleet, w.device, w.epoch, w.seq, w.payload).where(
                tuple_(w.fleet, w.device, w.epoch, w.seq).in_(keys)
            )
        )
    }
    for item, key in zip(repeated, keys, strict=True):
        if stored.get(key, item.payload) != item.payload:
            refused.append(conflict(item))


class SeqSpans:
    """The seqs each epoch has seen (first, last), cached from the database.

    :meth:`plausible` checks a batch against the cache and asks the database only about
    epochs it has not seen yet, or before refusing a window (another collector sharing the
    database may have seen more of the epoch). :meth:`commit` takes in what a committed batch
    stored; a batch that rolled back leaves the cache as it was.
    """

    def __init__(self, jump: int) -> None:
        self.jump = jump
        self._spans: dict[EpochKey, tuple[int, int]] = {}

    def plausible(
        self, conn: Any, batch: Sequence[StoredWindow], refused: list[DeadLetter]
    ) -> list[StoredWindow]:
        """The windows whose seq is within ``jump`` of the seqs their epoch has seen.

        The first window of an epoch is taken whatever its seq (an upgraded agent goes on
        counting); every later one must lie within the jump of the seqs seen so far, so a
        forged far-away seq can neither be stored nor stretch the epoch's range.
        """
        spans = self._spans
        unknown = {_epoch_of(item) for item in batch} - spans.keys()
        if unknown:
            spans.update(_stored_spans(conn, unknown))
        accepted, doubtful = self._check(batch)
        if doubtful:
            # Before refusing, ask the database: it may know more of these epochs than this
            # cache (another collector shares it); then check the batch again, in order.
            spans.update(_stored_spans(conn, {_epoch_of(item) for item, _, _ in doubtful}))
            accepted, doubtful = self._check(batch)
            refused.extend(_too_far(item, first, last, self.jump) for item, first, last in doubtful)
        return accepted

    def _check(
        self, batch: Sequence[StoredWindow]
    ) -> tuple[list[StoredWindow], list[tuple[StoredWindow, int, int]]]:
        """Walk the batch in arrival order: the windows within the jump of the seqs seen
        before them, and the others with the span they were judged against."""
        span: dict[EpochKey, list[int]] = {}
        accepted: list[StoredWindow] = []
        doubtful: list[tuple[StoredWindow, int, int]] = []
        for item in batch:
            key, seq = _epoch_of(item), item.window.seq
            seqs = span.get(key)
            if seqs is None:
                known = self._spans.get(key)
                seqs = span[key] = list(known) if known else [seq, seq]
            if seq > seqs[1] + self.jump or seq < seqs[0] - self.jump:
                doubtful.append((item, seqs[0], seqs[1]))
                continue
            seqs[0], seqs[1] = min(seqs[0], seq), max(seqs[1], seq)
            accepted.append(item)
        return accepted, doubtful

    def commit(self, stored: Sequence[StoredWindow]) -> None:
        """Take in the seqs of windows that a committed batch stored."""
        spans = self._spans
        for item in stored:
            key, seq = _epoch_of(item), item.window.seq
            first, last = spans.get(key, (seq, seq))
            spans[key] = (min(first, seq), max(last, seq))


def _epoch_of(item: StoredWindow) -> EpochKey:
    w = item.window
    return (w.fleet, w.device, w.epoch)


def _stored_spans(conn: Any, keys: set[EpochKey]) -> dict[EpochKey, tuple[int, int]]:
    """The seqs stored of these epochs: their device_epochs rows, widened by what the
    devices rows count of their current epochs."""
    e, d = device_epochs.c, devices.c
    spans: dict[EpochKey, tuple[int, int]] = {}

    def widen(key: EpochKey, first: int, last: int) -> None:
        known = spans.get(key)
        spans[key] = (min(known[0], first), max(known[1], last)) if known else (first, last)

    for r in conn.execute(
        select(e.fleet, e.device, e.epoch, e.first_seq, e.last_seq).where(
            tuple_(e.fleet, e.device, e.epoch).in_(list(keys))
        )
    ):
        widen((r.fleet, r.device, r.epoch), int(r.first_seq), int(r.last_seq))
    for r in conn.execute(
        select(d.fleet, d.device, d.epoch, d.epoch_first_seq, d.last_seq).where(
            tuple_(d.fleet, d.device, d.epoch).in_(list(keys)), d.epoch_windows > 0
        )
    ):
        widen((r.fleet, r.device, r.epoch), int(r.epoch_first_seq), int(r.last_seq))
    return spans


def _too_far(item: StoredWindow, first: int, last: int, jump: int) -> DeadLetter:
    w = item.window
    return DeadLetter(
        telemetry_topic(w.fleet, w.device),
        f"seq {w.seq} is more than storage.max_seq_jump ({jump}) away from the "
        f"seqs {first}..{last} of epoch {w.epoch!r}",
        item.payload,
        item.received_at,
    )


def upsert_epochs(conn: Any, insert: Any, inserted: Sequence[StoredWindow]) -> None:
    """Count newly stored windows into the lives (epochs) of their devices."""
    lives: dict[EpochKey, dict[str, Any]] = {}
    for item in inserted:
        w = item.window
        key = _epoch_of(item)
        row = lives.get(key)
        if row is None:
            row = lives[key] = {
                "fleet": w.fleet,
                "device": w.device,
                "epoch": w.epoch,
                "first_seq": w.seq,
                "last_seq": w.seq,
                "windows": 0,
                "inferences": 0,
                "first_seen": item.received_at,
                "last_seen": item.received_at,
            }
        row["first_seq"] = min(row["first_seq"], w.seq)
        row["last_seq"] = max(row["last_seq"], w.seq)
        row["windows"] += 1
        row["inferences"] += w.inferences
        row["last_seen"] = max(row["last_seen"], item.received_at)
    if not lives:
        return
    stmt = insert(device_epochs)
    new, old = stmt.excluded, device_epochs.c
    stmt = stmt.on_conflict_do_update(
        index_elements=["fleet", "device", "epoch"],
        set_={
            "first_seq": case((new.first_seq < old.first_seq, new.first_seq), else_=old.first_seq),
            "last_seq": case((new.last_seq > old.last_seq, new.last_seq), else_=old.last_seq),
            "windows": old.windows + new.windows,
            "inferences": old.inferences + new.inferences,
            "last_seen": case((new.last_seen > old.last_seen, new.last_seen), else_=old.last_seen),
        },
    )
    conn.execute(stmt, list(lives.values()))


def conflict(item: StoredWindow) -> DeadLetter:
    """The dead letter of a window whose key is stored with another payload."""
    w = item.window
    return DeadLetter(
        telemetry_topic(w.fleet, w.device),
        f"conflict: another window with seq {w.seq} of epoch {w.epoch!r} is stored "
        "(a forged window, or a spool restored from a backup)",
        item.payload,
        item.received_at,
    )


#: Columns of a devices row that hold its current epoch's counters (not shown as such).
CURRENT_EPOCH_COLUMNS = (
    "epoch_first_seq",
    "epoch_windows",
    "epoch_inferences",
    "epoch_first_seen",
    "epoch_last_seen",
)


def with_current_epoch(device: dict[str, Any], stored: list[Any]) -> list[dict[str, Any]]:
    """A device's lives: its ``device_epochs`` rows, with the counters its devices row keeps
    of its current epoch added (and those columns taken off ``device``)."""
    counted = {c: device.pop(c, None) for c in CURRENT_EPOCH_COLUMNS}
    out = [dict(row) for row in stored]
    if not counted["epoch_windows"]:
        return out
    current = {
        "epoch": device["epoch"],
        "first_seq": counted["epoch_first_seq"],
        "last_seq": device["last_seq"],
        "windows": counted["epoch_windows"],
        "inferences": counted["epoch_inferences"],
        "first_seen": counted["epoch_first_seen"],
        "last_seen": counted["epoch_last_seen"],
    }
    for row in out:
        if row["epoch"] == current["epoch"]:
            row["first_seq"] = min(int(row["first_seq"]), int(current["first_seq"]))
            row["last_seq"] = max(int(row["last_seq"]), int(current["last_seq"]))
            row["windows"] = int(row["windows"]) + int(current["windows"])
            row["inferences"] = int(row["inferences"]) + int(current["inferences"])
            row["first_seen"] = min(float(row["first_seen"]), float(current["first_seen"]))
            row["last_seen"] = max(float(row["last_seen"]), float(current["last_seen"]))
            return out
    return [*out, current]


def life(row: Any) -> dict[str, Any]:
    """A ``device_epochs`` row as the API shows it, with the windows missing in its range."""
    out = {k: row[k] for k in ("epoch", "first_seq", "last_seq", "windows", "inferences")}
    out.update(first_seen=row["first_seen"], last_seen=row["last_seen"])
    span = int(row["last_seq"]) - int(row["first_seq"]) + 1
    out["missing"] = max(0, span - int(row["windows"]))
    return out


def add_lives(row: dict[str, Any], lives: list[dict[str, Any]]) -> None:
    """Attach a device's lives and its windows missing over all of them to its row."""
    row["epochs"] = sorted(lives, key=lambda life: life["first_seen"])
    row["missing"] = sum(life["missing"] for life in lives)
