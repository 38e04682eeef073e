"""The durable spool: accepted windows survive kill -9, seqs are never reused, the bound counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedl.agent.telemetry.spool import Spool
from edgedl.errors import TelemetryError


def _payload(seq: int, dropped: int) -> bytes:
    return f'{{"seq": {seq}, "dropped": {dropped}}}'.encode()


def test_windows_come_out_in_order_and_leave_only_when_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    seqs = [spool.enqueue(_payload) for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert [w.seq for w in spool.pending(3)] == [0, 1, 2]
    assert [w.seq for w in spool.pending(3, skip={0, 1})] == [2, 3, 4]
    spool.remove(1)
    spool.remove(1)  # a second acknowledgement of the same window is harmless
    assert [w.seq for w in spool.pending(10)] == [0, 2, 3, 4]
    assert spool.pending(1)[0].payload == _payload(0, 0)


def test_the_sequence_survives_a_restart_and_is_never_reused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    for _ in range(3):
        spool.enqueue(_payload)
    for seq in range(3):
        spool.remove(seq)
    spool.close()
    reopened = Spool(tmp_path / "spool.db")
    assert len(reopened) == 0
    assert reopened.enqueue(_payload) == 3


def test_past_the_bound_the_oldest_go_and_the_next_window_reports_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_windows=3)
    reported: dict[int, int] = {}

    def build(seq: int, dropped: int) -> bytes:
        reported[seq] = dropped
        return _payload(seq, dropped)

    for _ in range(6):
        spool.enqueue(build)
    assert [w.seq for w in spool.pending(10)] == [3, 4, 5]
    # seq 3 pushed out seq 0, seq 4 reported it and pushed out 1, seq 5 reported that...
    assert reported == {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 1}
    # ...and pushed out seq 2, which the next window will report.
    assert spool.dropped == 1 and spool.dropped_total == 3
    spool.close()
    spool = Spool(tmp_path / "spool.db", max_windows=3)
    assert spool.dropped == 1  # kept across restarts
    for _ in range(3):
        spool.enqueue(build)  # seqs 6-8 push out 3-5, and with 4 and 5 their reports
    kept = [w.seq for w in spool.pending(10)]
    assert kept == [6, 7, 8]
    missing = set(range(9)) - set(kept)
    assert sum(reported[s] for s in kept) + spool.dropped == len(missing) == 6


def test_the_byte_bound_keeps_the_newest_window(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=2500)
    for _ in range(4):
        spool.enqueue(lambda seq, dropped: bytes(1000))
    assert len(spool) == 2 and spool.size_bytes == 2000
    spool.enqueue(lambda seq, dropped: bytes(5000))  # bigger than the bound alone: kept
    assert [w.seq for w in spool.pending(10)] == [4]


def test_a_failed_build_stores_nothing_and_uses_no_seq(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")

    def broken(seq: int, dropped: int) -> bytes:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        spool.enqueue(broken)
    assert len(spool) == 0 and spool.enqueue(_payload) == 0


def test_an_unusable_path_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TelemetryError, match="cannot open the telemetry spool"):
        Spool(tmp_path / "file" / "spool.db")


WRITER = """
import sys
from edgedl.agent.telemetry.spool import Spool
spool = Spool(sys.argv[1])
while True:
    seq = spool.enqueue(lambda s, d: b"x" * 1500 + str(s).encode())
    print(seq, flush=True)
"""


@pytest.mark.slow
def test_every_accepted_window_survives_kill_9(tmp_path: Path) -> None:
    """A process spooling as fast as it can is SIGKILLed: whatever it was told is stored, is."""
    path = tmp_path / "spool.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    accepted: list[int] = []
    deadline = time.monotonic() + 30
    while len(accepted) < 200 and time.monotonic() < deadline:
        accepted.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    accepted += [int(line) for line in proc.stdout.read().split()]
    assert len(accepted) >= 200
    spool = Spool(path)
    stored = {w.seq for w in spool.pending(100_000)}
    assert set(accepted) <= stored
    assert spool.enqueue(_payload) == max(stored) + 1


def test_a_new_spool_has_an_epoch_of_its_own_that_it_keeps(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "a" / "spool.db")
    epoch = spool.epoch
    assert len(epoch) == 16 and int(epoch, 16) >= 0
    spool.enqueue(_payload)
    spool.close()
    reopened = Spool(tmp_path / "a" / "spool.db")
    assert reopened.epoch == epoch and reopened.next_seq == 1  # a restart is the same life
    reopened.close()
    # A re-imaged device: the spool is gone, the new one is a new life starting at seq 0.
    for path in (tmp_path / "a").glob("spool.db*"):
        path.unlink()
    fresh = Spool(tmp_path / "a" / "spool.db")
    assert fresh.epoch != epoch and fresh.next_seq == 0
    fresh.close()


def test_a_spool_made_before_epochs_keeps_the_epoch_its_windows_were_sent_under(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:  # the file an older agent left: no epoch in it
        db.executescript(
            "CREATE TABLE windows (seq INTEGER PRIMARY KEY, payload BLOB NOT NULL,"
            " size INTEGER NOT NULL, reports_dropped INTEGER NOT NULL DEFAULT 0);"
            "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"
            "INSERT INTO counters VALUES ('next_seq', 41), ('dropped', 0), ('dropped_total', 0);"
        )
    spool = Spool(path)
    assert spool.epoch == "" and spool.enqueue(_payload) == 41
    spool.close()
