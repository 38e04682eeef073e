"""The collector's database schema and its migrations (SQLAlchemy Core, SQLite and PostgreSQL).

Migrations are a versioned list kept here: each has a number and a function that brings the
schema from the previous number to its own. :func:`migrate` applies the missing ones in order
at start, inside one transaction each, and records them in ``schema_version``. A database
written by a newer collector (a higher number than this code knows) is refused. To change the
schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
)

from edgedl.errors import ConfigError

metadata = MetaData()

# SQLite makes only INTEGER PRIMARY KEY an auto-increment alias of the rowid.
_Id = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)

windows = Table(
    "windows",
    metadata,
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

devices = Table(
    "devices",
    metadata,
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

dead_letter = Table(
    "dead_letter",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("topic", String(300), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_size", Integer, nullable=False),
    Column("received_at", Float, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # Set while the alert is open, NULL once resolved: the unique index makes "raised once"
    # hold across collectors that share one database.
    Column("open_key", String(600), unique=True),
    Column("kind", String(32), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("fleet", String(128), nullable=False),
    Column("device", String(128)),
    Column("model", String(128)),
    Column("version", String(128)),
    Column("metric", String(300), nullable=False),
    Column("value", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("state", String(16), nullable=False),
    Column("opened_at", Float, nullable=False),
    Column("resolved_at", Float),
    Column("message", String(500)),
    Index("ix_alerts_state", "state"),
)

model_references = Table(
    "model_references",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("added_at", Float, nullable=False),
    Index("ix_model_references_model_version", "model", "version"),
)

_V1_TABLES = [windows, devices, dead_letter, alerts, model_references]

# Fleet rollouts (edgedl.collector.fleet): published bundles and the rollouts of them.
artifacts = Table(
    "artifacts",
    metadata,
    Column("model", String(128), primary_key=True),
    Column("version", String(128), primary_key=True),
    Column("sha256", String(64), nullable=False),  # of the bundle .tar as served
    Column("size_bytes", BigInteger, nullable=False),
    Column("model_sha256", String(64), nullable=False),  # the manifest's, as devices report it
    Column("key_id", String(32)),  # who signed it (None: unsigned)
    Column("manifest", Text, nullable=False),
    Column("added_at", Float, nullable=False),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("fleet", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("strategy", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # running, completed, halted
    Column("wave", Integer, nullable=False),  # index of the wave in progress (or last)
    Column("phase", String(16), nullable=False),  # arriving, probation, promoting
    Column("phase_since", Float, nullable=False),
    Column("reason", String(1000)),
    Column("plan", Text, nullable=False),  # JSON: devices, waves, gates, options, previous
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_rollouts_state", "state"),
)


# Sequential drift detectors (edgedl.collector.sequential): one JSON state per device and
# model version, so that a restarted collector continues every CUSUM where it stood.
drift_sequential = Table(
    "drift_sequential",
    metadata,
    Column("fleet", String(128), primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("model", String(128), primary_key=True),
    Column("version", String(128), primary_key=True),
    Column("state", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=_V1_TABLES)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[artifacts, rollouts])


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[drift_sequential])


Migration = tuple[int, str, Callable[[Connection], None]]
MIGRATIONS: list[Migration] = [
    (1, "windows, devices, dead_letter, alerts, model_references", _v1),
    (2, "artifacts, rollouts (fleet rollouts)", _v2),
    (5, "drift_sequential (CUSUM state per device and model version)", _v5),
]


def current_version(conn: Connection) -> int:
    """The schema version of the database (0 when empty)."""
    schema_version.create(conn, checkfirst=True)
    return int(
        conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()
    )


def migrate(conn: Connection) -> int:
    """Apply the migrations the database lacks; return its version afterwards."""
    have = current_version(conn)
    newest = MIGRATIONS[-1][0]
    if have > newest:
        raise ConfigError(
            f"the database has schema version {have}, newer than this collector knows ({newest}): "
            "upgrade edgedl"
        )
    for version, description, step in MIGRATIONS:
        if version > have:
            step(conn)
            conn.execute(
                schema_version.insert().values(
                    version=version, description=description, applied_at=time.time()
                )
            )
    return newest
