"""The collector's database schema and its migrations (SQLAlchemy Core, SQLite and PostgreSQL).

Migrations are a versioned list kept here: each has a number and a function that brings the
schema from the previous number to its own. :func:`migrate` applies the missing ones in order
at start, inside one transaction each, and records them in ``schema_version``. A database
written by a newer collector (a higher number than this code knows) is refused. To change the
schema, append a migration; never edit one that has shipped.

The first migrations create their tables from the table definitions below, which describe the
newest shape; so a migration that reshapes a table looks at what it finds and leaves a table
that already has the new shape alone.
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
    inspect,
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
    # The spool epoch of the window ("" for agents that predate epochs).
    Column("epoch", String(64), nullable=False, server_default=""),
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
    UniqueConstraint("fleet", "device", "epoch", "seq", name="uq_windows_key"),
)

devices = Table(
    "devices",
    metadata,
    Column("fleet", String(128), primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float),
    # The epoch and seq of the device's newest window.
    Column("epoch", String(64)),
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
    # When the last status message arrived: a window received later outranks what it said.
    Column("status_received_at", Float),
    # The current epoch's counters not yet in device_epochs (migration 8): a batch updates
    # this one row per device; the trigger ``devices_close_epoch`` adds them to the epoch's
    # device_epochs row when the device's epoch changes. Its last seq is ``last_seq``.
    Column("epoch_first_seq", BigInteger),
    Column("epoch_windows", BigInteger, nullable=False, server_default="0"),
    Column("epoch_inferences", BigInteger, nullable=False, server_default="0"),
    Column("epoch_first_seen", Float),
    Column("epoch_last_seen", Float),
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
    Column("acknowledged_at", Float),  # migration 6
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


# One row per life of a device's telemetry (a spool epoch): the seqs it spans and how many
# windows arrived, so the windows missing in between are a number.
device_epochs = Table(
    "device_epochs",
    metadata,
    Column("fleet", String(128), primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("epoch", String(64), primary_key=True),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("windows", BigInteger, nullable=False),
    Column("inferences", BigInteger, nullable=False),
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

# The devices enrolled with ``edgedl collector devices add`` (see RegistryConfig).
registered_devices = Table(
    "registered_devices",
    metadata,
    Column("fleet", String(128), primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("added_at", Float, nullable=False),
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


# Late labels (edgedl.collector.accuracy): one row per cell of a window's confusion matrix,
# so real accuracy, precision, recall and F1 over any span are sums in SQL.
label_confusion = Table(
    "label_confusion",
    metadata,
    Column("window_id", BigInteger, nullable=False),
    Column("fleet", String(128), nullable=False),
    Column("device", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("window_end", Float, nullable=False),
    Column("actual", Integer, nullable=False),
    Column("predicted", Integer, nullable=False),
    Column("count", BigInteger, nullable=False),
    # Set on the cells of a label sent to the collector directly (window_id 0): the
    # label_digest of its prediction id, so that the agent's count of it can replace it.
    Column("prediction", String(16)),
    Index("ix_label_confusion_fleet_end", "fleet", "window_end"),
)


# Which labelled predictions are counted, and through which route (edgedl.collector.
# direct_labels): "agent" (a window's labels.ids) or "collector" (POST /api/v1/labels).
# The key makes a prediction count once, whichever route brings its label first; the agent's
# count replaces the collector's when both come.
labelled_predictions = Table(
    "labelled_predictions",
    metadata,
    Column("fleet", String(128), primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("prediction", String(16), primary_key=True),
    Column("route", String(16), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ix_labelled_predictions_received", "received_at"),
)


# Accuracy estimated without labels (edgedl.calibration): per window and model version, the
# expected number of correct predictions and its variance, which add up over any span.
accuracy_estimates = Table(
    "accuracy_estimates",
    metadata,
    Column("window_id", BigInteger, nullable=False),
    Column("fleet", String(128), nullable=False),
    Column("device", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("window_end", Float, nullable=False),
    Column("predictions", BigInteger, nullable=False),
    Column("expected_correct", Float, nullable=False),
    Column("variance", Float, nullable=False),
    Column("extrapolated", BigInteger, nullable=False),
    Index("ix_accuracy_estimates_fleet_end", "fleet", "window_end"),
)


# Leases (edgedl.collector.leader): one row per job that one collector of a group may run at
# a time (the fleet's wave controller), held by the collector that renewed it last until it
# expires; ``term`` counts the hands it has passed through.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("address", String(300)),  # where the holder's HTTP API answers
    Column("term", BigInteger, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)


# Stage-health reference profiles of speech pipelines (edgedl.collector.stage_health): one per
# pipeline name, the JSON written by `edgedl agent run-pipeline --profile`.
pipeline_references = Table(
    "pipeline_references",
    metadata,
    Column("pipeline", String(128), primary_key=True),
    Column("profile", Text, nullable=False),
    Column("added_at", Float, nullable=False),
)


# Samples for retraining (edgedl.collector.samples): one row per sample a device sent with
# [sampling] on, its input tensors as the JSON of the message (``inputs``); ``sample_id`` makes
# a message the broker delivers twice a no-op. A late label is its own row in
# ``sample_labels``, so that it may arrive before or after its sample.
samples = Table(
    "samples",
    metadata,
    Column("sample_id", String(300), primary_key=True),
    Column("fleet", String(128), nullable=False),
    Column("device", String(128), nullable=False),
    Column("model", String(128), nullable=False),
    Column("version", String(128), nullable=False),
    Column("time", Float, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("prediction_id", String(160)),
    Column("batch_index", Integer, nullable=False),
    Column("predicted", Integer),
    Column("confidence", Float),
    Column("inputs", LargeBinary, nullable=False),
    Column("received_at", Float, nullable=False),
    Index("ix_samples_fleet_time", "fleet", "time"),
)

sample_labels = Table(
    "sample_labels",
    metadata,
    Column("sample_id", String(300), primary_key=True),
    Column("label", Integer, nullable=False),
    Column("received_at", Float, nullable=False),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=_V1_TABLES)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[artifacts, rollouts])


_DEVICE_COLUMNS_V2 = (
    "device, fleet, first_seen, last_seen, last_seq, window_s, model, version, agent_version, "
    "inferences, windows, online, status_since, status"
)
_WINDOW_COLUMNS_V2 = (
    "id, device, fleet, seq, window_start, window_end, received_at, model, version, requests, "
    "inferences, errors, latency_p50_ms, latency_p95_ms, latency_p99_ms, payload"
)


def _v3(conn: Connection) -> None:
    """Identity: a device is (fleet, device); windows are keyed by (fleet, device, epoch, seq)."""
    if "epoch" not in {c["name"] for c in inspect(conn).get_columns("windows")}:
        if conn.dialect.name == "sqlite":
            _reshape_sqlite(conn)
        else:
            _reshape_postgresql(conn)
        # The windows stored so far were all of the epoch "" (agents sent none).
        conn.execute(devices.update().where(devices.c.last_seq.is_not(None)).values(epoch=""))
    metadata.create_all(conn, tables=[device_epochs, registered_devices])
    w = windows.c
    lives = select(
        w.fleet,
        w.device,
        w.epoch,
        func.min(w.seq),
        func.max(w.seq),
        func.count(),
        func.coalesce(func.sum(w.inferences), 0),
        func.min(w.received_at),
        func.max(w.received_at),
    ).group_by(w.fleet, w.device, w.epoch)
    conn.execute(device_epochs.insert().from_select([c.name for c in device_epochs.c], lives))


def _reshape_sqlite(conn: Connection) -> None:
    # SQLite cannot drop a constraint or change a primary key: copy into new tables.
    for table, columns, extra in (
        (windows, _WINDOW_COLUMNS_V2, ", epoch"),
        (devices, _DEVICE_COLUMNS_V2, ""),
    ):
        conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {table.name}_v2")
        table.create(conn)
        values = columns + (", ''" if extra else "")
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({columns}{extra}) SELECT {values} FROM {table.name}_v2"
        )
        conn.exec_driver_sql(f"DROP TABLE {table.name}_v2")


def _reshape_postgresql(conn: Connection) -> None:
    for statement in (
        "ALTER TABLE windows ADD COLUMN epoch VARCHAR(64) NOT NULL DEFAULT ''",
        "ALTER TABLE windows DROP CONSTRAINT uq_windows_device_seq",
        "ALTER TABLE windows ADD CONSTRAINT uq_windows_key UNIQUE (fleet, device, epoch, seq)",
        "ALTER TABLE devices DROP CONSTRAINT devices_pkey",
        "ALTER TABLE devices ADD CONSTRAINT devices_pkey PRIMARY KEY (fleet, device)",
        "ALTER TABLE devices ADD COLUMN epoch VARCHAR(64)",
        "ALTER TABLE devices ADD COLUMN status_received_at DOUBLE PRECISION",
    ):
        conn.exec_driver_sql(statement)


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[drift_sequential])


def _v6(conn: Connection) -> None:
    if "acknowledged_at" not in {c["name"] for c in inspect(conn).get_columns("alerts")}:
        kind = "REAL" if conn.dialect.name == "sqlite" else "DOUBLE PRECISION"
        conn.exec_driver_sql(f"ALTER TABLE alerts ADD COLUMN acknowledged_at {kind}")


def _v7(conn: Connection) -> None:
    metadata.create_all(conn, tables=[label_confusion, accuracy_estimates])


_EPOCH_COLUMNS = (
    ("epoch_first_seq", "BIGINT"),
    ("epoch_windows", "BIGINT NOT NULL DEFAULT 0"),
    ("epoch_inferences", "BIGINT NOT NULL DEFAULT 0"),
    ("epoch_first_seen", "{float}"),
    ("epoch_last_seen", "{float}"),
)
_CLOSE_EPOCH_ROW = (
    "INSERT INTO device_epochs (fleet, device, epoch, first_seq, last_seq, windows, inferences,"
    " first_seen, last_seen) VALUES (OLD.fleet, OLD.device, OLD.epoch, OLD.epoch_first_seq,"
    " OLD.last_seq, OLD.epoch_windows, OLD.epoch_inferences, OLD.epoch_first_seen,"
    " OLD.epoch_last_seen) ON CONFLICT (fleet, device, epoch) DO UPDATE SET"
    " first_seq = {least}(device_epochs.first_seq, excluded.first_seq),"
    " last_seq = {greatest}(device_epochs.last_seq, excluded.last_seq),"
    " windows = device_epochs.windows + excluded.windows,"
    " inferences = device_epochs.inferences + excluded.inferences,"
    " last_seen = {greatest}(device_epochs.last_seen, excluded.last_seen);"
)
_CLOSE_EPOCH_WHEN = (
    "OLD.epoch IS NOT NULL AND NEW.epoch IS DISTINCT FROM OLD.epoch AND OLD.epoch_windows > 0"
)


def _v8(conn: Connection) -> None:
    """Leases; the current epoch's counters on the devices row, closed by a trigger."""
    metadata.create_all(conn, tables=[leases])
    have = {c["name"] for c in inspect(conn).get_columns("devices")}
    sqlite = conn.dialect.name == "sqlite"
    for name, kind in _EPOCH_COLUMNS:
        if name not in have:
            kind = kind.format(float="REAL" if sqlite else "DOUBLE PRECISION")
            conn.exec_driver_sql(f"ALTER TABLE devices ADD COLUMN {name} {kind}")
    if sqlite:
        conn.exec_driver_sql(
            "CREATE TRIGGER IF NOT EXISTS devices_close_epoch BEFORE UPDATE OF epoch ON devices "
            f"WHEN {_CLOSE_EPOCH_WHEN.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN "
            + _CLOSE_EPOCH_ROW.format(least="min", greatest="max")
            + " END"
        )
        return
    conn.exec_driver_sql(
        "CREATE OR REPLACE FUNCTION devices_close_epoch() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN "
        + _CLOSE_EPOCH_ROW.format(least="LEAST", greatest="GREATEST")
        + " RETURN NEW; END $$"
    )
    conn.exec_driver_sql("DROP TRIGGER IF EXISTS devices_close_epoch ON devices")
    conn.exec_driver_sql(
        "CREATE TRIGGER devices_close_epoch BEFORE UPDATE OF epoch ON devices FOR EACH ROW "
        f"WHEN ({_CLOSE_EPOCH_WHEN}) EXECUTE FUNCTION devices_close_epoch()"
    )


def _v9(conn: Connection) -> None:
    metadata.create_all(conn, tables=[pipeline_references])


def _v10(conn: Connection) -> None:
    metadata.create_all(conn, tables=[samples, sample_labels])


def _v11(conn: Connection) -> None:
    if "prediction" not in {c["name"] for c in inspect(conn).get_columns("label_confusion")}:
        conn.exec_driver_sql("ALTER TABLE label_confusion ADD COLUMN prediction VARCHAR(16)")
    metadata.create_all(conn, tables=[labelled_predictions])


Migration = tuple[int, str, Callable[[Connection], None]]
MIGRATIONS: list[Migration] = [
    (1, "windows, devices, dead_letter, alerts, model_references", _v1),
    (2, "artifacts, rollouts (fleet rollouts)", _v2),
    (3, "devices keyed by (fleet, device), spool epochs, device_epochs, registered_devices", _v3),
    (5, "drift_sequential (CUSUM state per device and model version)", _v5),
    (6, "alerts.acknowledged_at (acknowledged from the dashboard)", _v6),
    (7, "label_confusion, accuracy_estimates (real and estimated accuracy per window)", _v7),
    (8, "leases (one wave controller per group); current epoch counters on devices", _v8),
    (9, "pipeline_references (stage-health reference profiles of pipelines)", _v9),
    (10, "samples, sample_labels (samples for retraining)", _v10),
    (11, "labelled_predictions, label_confusion.prediction (labels sent to the collector)", _v11),
]


#: The PostgreSQL advisory lock that serialises migrations (an arbitrary 64-bit key).
MIGRATION_LOCK_KEY = 0x6564676564_6C


def current_version(conn: Connection) -> int:
    """The schema version of the database (0 when empty)."""
    schema_version.create(conn, checkfirst=True)
    return int(
        conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()
    )


def migrate(conn: Connection) -> int:
    """Apply the migrations the database lacks, in order; return its version afterwards.

    Each migration not recorded in ``schema_version`` is applied, also one numbered below the
    newest applied (branches developed side by side may ship their migrations in any order).
    """
    if conn.dialect.name == "postgresql":
        # Collectors of a group that start together on an empty database: one migrates, the
        # others wait for its transaction and find the schema done.
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
    have = current_version(conn)
    newest = MIGRATIONS[-1][0]
    if have > newest:
        raise ConfigError(
            f"the database has schema version {have}, newer than this collector knows ({newest}): "
            "upgrade edgedl"
        )
    applied = {int(v) for v in conn.execute(select(schema_version.c.version)).scalars()}
    for version, description, step in MIGRATIONS:
        if version not in applied:
            step(conn)
            conn.execute(
                schema_version.insert().values(
                    version=version, description=description, applied_at=time.time()
                )
            )
    return newest
