"""A database written by the previous collector (schema 2) is upgraded with its data intact."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    select,
)
from tests.collector.helpers import WindowMaker

from edgedl.collector import schema
from edgedl.collector.batch import StoredWindow
from edgedl.collector.store import Store, engine_url
from edgedl.telemetry import encode_window

# The windows and devices tables as schema 2 made them (a device was its name alone).
_V2 = MetaData()
_Id = BigInteger().with_variant(Integer(), "sqlite")
V2_WINDOWS = Table(
    "windows",
    _V2,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("device", String(128), nullable=False),
    Column("fleet", String(128), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("window_start", Float, nullable=False),
    Column("window_end", Float, nullable=False),
    Column("received_at", Float, nullable=False),
    Column("model", String(128)),
    Column("version", String(128)),
    Column("requests", BigInteger, nullable=False, default=0),
    Column("inferences", BigInteger, nullable=False, default=0),
    Column("errors", BigInteger, nullable=False, default=0),
    Column("latency_p50_ms", Float),
    Column("latency_p95_ms", Float),
    Column("latency_p99_ms", Float),
    Column("payload", LargeBinary, nullable=False),
    UniqueConstraint("device", "seq", name="uq_windows_device_seq"),
)
V2_DEVICES = Table(
    "devices",
    _V2,
    Column("device", String(128), primary_key=True),
    Column("fleet", String(128), nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float),
    Column("last_seq", BigInteger),
    Column("window_s", Float),
    Column("model", String(128)),
    Column("version", String(128)),
    Column("agent_version", String(64)),
    Column("inferences", BigInteger, nullable=False, default=0),
    Column("windows", BigInteger, nullable=False, default=0),
    Column("online", Boolean),
    Column("status_since", Float),
    Column("status", Text),
)
# Alerts as schema 2 had them: without acknowledged_at (added by migration 6).
Table(
    "alerts",
    _V2,
    *[c._copy() for c in schema.alerts.c if c.name != "acknowledged_at"],
)
UNCHANGED = ["dead_letter", "model_references", "artifacts", "rollouts"]


def write_v2_database(url: str, windows: WindowMaker, later: tuple[int, ...] = ()) -> None:
    """What a schema-2 collector left: 7 windows of pi-1 (one missing), 2 of cam; with
    ``later`` the migrations numbered above 3 that a collector without 3 applied too."""
    engine = create_engine(engine_url(url))
    now = time.time()
    with engine.begin() as conn:
        schema.schema_version.create(conn)
        _V2.create_all(conn)
        schema.metadata.create_all(conn, tables=[schema.metadata.tables[t] for t in UNCHANGED])
        for version, _, step in schema.MIGRATIONS:
            if version in later:
                step(conn)
        for version in (1, 2, *later):
            conn.execute(
                schema.schema_version.insert().values(
                    version=version, description="before", applied_at=now
                )
            )
        for device, seqs in (("pi-1", [0, 1, 2, 4, 5, 6, 7]), ("cam", [0, 1])):
            for seq in seqs:
                w = windows.window(device, seq, n=10)
                conn.execute(
                    V2_WINDOWS.insert().values(
                        device=device, fleet=w.fleet, seq=seq, window_start=w.window_start,
                        window_end=w.window_end, received_at=now + seq, model="digits",
                        version="1", requests=10, inferences=10, errors=0,
                        payload=encode_window(w)[0],
                    )
                )  # fmt: skip
            conn.execute(
                V2_DEVICES.insert().values(
                    device=device, fleet=windows.fleet, first_seen=now, last_seen=now + seqs[-1],
                    last_seq=seqs[-1], window_s=60.0, model="digits", version="1",
                    inferences=10 * len(seqs), windows=len(seqs), online=True,
                )
            )  # fmt: skip
    engine.dispose()


@pytest.mark.parametrize("later", [(), (5,)], ids=["schema-2", "schema-2-and-5"])
def test_a_schema_2_database_is_upgraded_with_its_data_intact(
    db_url: str, windows: WindowMaker, later: tuple[int, ...]
) -> None:
    write_v2_database(db_url, windows, later)
    store = Store(db_url)
    newest = schema.MIGRATIONS[-1][0]
    try:
        assert store.schema_version == newest
        with store.engine.connect() as conn:
            applied = conn.execute(select(schema.schema_version.c.version)).scalars().all()
        assert sorted(applied) == [v for v, _, _ in schema.MIGRATIONS]
        fleet = windows.fleet
        keys = sorted(store.window_identities())
        assert keys == sorted(
            [(fleet, "pi-1", "", s) for s in (0, 1, 2, 4, 5, 6, 7)]
            + [(fleet, "cam", "", 0), (fleet, "cam", "", 1)]
        )
        pi = store.device("pi-1", fleet)
        assert pi is not None
        assert (pi["fleet"], pi["epoch"], pi["last_seq"], pi["inferences"]) == (fleet, "", 7, 70)
        assert pi["missing"] == 1 and len(pi["epochs"]) == 1
        # An old agent (no epoch) redelivering a window it sent before is still a duplicate;
        # its next window goes on counting in the same life.
        again = [
            StoredWindow(w, encode_window(w)[0], time.time())
            for w in (windows.window("pi-1", 7, n=10), windows.window("pi-1", 8, n=10))
        ]
        assert [s.window.seq for s in store.commit_batch(again).stored] == [8]
        # A device of the same name in another fleet is a device of its own now.
        other = windows.window("pi-1", 0, n=5).model_copy(update={"fleet": fleet + "-b"})
        assert len(store.commit_batch([StoredWindow(other, b"{}", time.time())]).stored) == 1
        assert store.device("pi-1", fleet)["inferences"] == 80  # type: ignore[index]
        assert store.device("pi-1", fleet + "-b")["inferences"] == 5  # type: ignore[index]
        # The alerts table gained acknowledged_at.
        assert store.acknowledge_alert(1, 123.0) is None  # no alert 1: nothing to acknowledge
        alert_id = store.open_alert(
            {
                "open_key": "k",
                "kind": "drift",
                "scope": "device",
                "fleet": fleet,
                "device": "cam",
                "metric": "psi:x",
                "value": 1.0,
                "threshold": 0.2,
                "state": "open",
                "opened_at": 1.0,
            }
        )
        assert alert_id is not None
        assert store.acknowledge_alert(alert_id, 123.0)["acknowledged_at"] == 123.0  # type: ignore[index]
    finally:
        store.close()
    reopened = Store(db_url)  # a second start finds nothing left to migrate
    assert reopened.schema_version == newest and len(reopened.window_identities()) == 11
    reopened.close()


def test_collectors_starting_together_on_an_empty_database_migrate_it_once(
    postgres_server: str | None,
) -> None:
    """A group's collectors started at once: one migrates, the others wait and find it done."""
    import threading

    from tests.collector.conftest import create_pg_database

    if postgres_server is None:
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    url, drop = create_pg_database(postgres_server)
    opened: list[Store] = []
    failed: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait()
        try:
            opened.append(Store(url))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not failed, failed
        assert len(opened) == 4
        newest = schema.MIGRATIONS[-1][0]
        assert {s.schema_version for s in opened} == {newest}
        with opened[0].engine.connect() as conn:
            applied = list(conn.execute(select(schema.schema_version.c.version)).scalars())
        assert sorted(applied) == [v for v, _, _ in schema.MIGRATIONS]  # each once
    finally:
        for s in opened:
            s.close()
        drop()
