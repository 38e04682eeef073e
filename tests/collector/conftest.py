"""Fixtures for the collector tests: a real broker, real databases, real telemetry windows."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.collector.helpers import (
    N_CLASSES,
    SHA,
    Broker,
    Publisher,
    WindowMaker,
    port_answers,
    sample_batch,
)
from tests.mqtt_broker import (  # noqa: F401  (fixtures for test_broker_connections.py)
    mosquitto_broker,
    password_broker,
    tls_broker,
    tls_files,
)
from tests.ports import free_port

from edgedl.bundle import Manifest, TensorSpec
from edgedl.collector.config import CollectorConfig
from edgedl.collector.service import Collector
from edgedl.profile import Profile


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto on 127.0.0.1:1883 when it answers, else one started on a free port."""
    if port_answers("127.0.0.1", 1883):
        yield Broker("127.0.0.1", 1883)
        return
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path_factory.mktemp("mosquitto") / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"
        "max_inflight_messages 1000\nset_tcp_nodelay true\n"
    )
    print(f"no broker on 127.0.0.1:1883: starting {binary} on port {port}")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while not port_answers("127.0.0.1", port):
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mosquitto did not start")
        time.sleep(0.05)
    yield Broker("127.0.0.1", port)
    proc.terminate()
    proc.wait(timeout=10)


#: The admin URL of the machine's PostgreSQL (trust auth, database ``test``).
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    """Admin URL of PostgreSQL on 127.0.0.1:5432, or None (with the reason printed)."""
    if not port_answers("127.0.0.1", 5432):
        print("PostgreSQL does not answer on 127.0.0.1:5432: PostgreSQL variants are skipped")
        yield None
        return
    yield PG_ADMIN


def create_pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new, empty database on the server of ``admin_url``: its URL and a function that
    drops it."""
    import psycopg

    name = f"edgedl_collector_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(
        admin_url.replace("postgresql://", "postgresql://", 1), autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}", drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str | None
) -> Iterator[str]:
    """A fresh, empty database: SQLite in the test's tmp dir, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'collector.db'}"
        return
    if postgres_server is None:
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    url, drop = create_pg_database(postgres_server)
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'collector.db'}"


# ---------------------------------------------------------------- telemetry


@pytest.fixture(scope="session")
def reference_manifest() -> Manifest:
    """A manifest whose reference profile is 2,000 unshifted samples."""
    inputs, outputs = sample_batch(np.random.default_rng(0), 2000)
    profile = Profile.from_reference(inputs, outputs, bins=10)
    return Manifest(
        name="digits",
        version="1",
        target="tflite-int8",
        runtime="litert",
        model_file="model.tflite",
        sha256=SHA,
        size_bytes=1000,
        inputs=[TensorSpec(name="image", shape=[-1, 8, 8, 1], dtype="float32")],
        outputs=[TensorSpec(name="probs", shape=[-1, N_CLASSES], dtype="float32")],
        profile=profile.to_dict(),
    )


@pytest.fixture
def manifest_file(reference_manifest: Manifest, tmp_path: Path) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(reference_manifest.model_dump_json())
    return path


@pytest.fixture
def fleet() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def windows(reference_manifest: Manifest, fleet: str) -> WindowMaker:
    return WindowMaker(reference_manifest, fleet)


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Publisher]:
    pub = Publisher(broker)
    yield pub
    pub.close()


@pytest.fixture
def start_collector() -> Iterator[Callable[[CollectorConfig], Collector]]:
    """Start collectors in-process; each is stopped at the end of the test."""
    started: list[Collector] = []

    def start(config: CollectorConfig) -> Collector:
        c = Collector(config).start()
        started.append(c)
        assert c.mqtt is not None
        assert c.mqtt.subscribed.wait(10), "collector did not subscribe at the broker"
        return c

    yield start
    for c in reversed(started):
        try:
            c.stop()
        except Exception as exc:  # a test may have stopped it already
            print(f"stopping collector: {exc}")
