"""``edgedl collector run``: starts, serves, stops cleanly on a signal; bad input is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from tests.collector.helpers import Broker, Publisher, WindowMaker, get_json, wait_until

from edgedl.collector.store import Store

EDGEDL = str(Path(sys.executable).with_name("edgedl"))
# Test sessions on a shared broker should not outlive the test by a day.
SHORT_SESSIONS = {**os.environ, "EDGEDL_COLLECTOR__MQTT__SESSION_EXPIRY_S": "120"}


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [EDGEDL, "collector", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=SHORT_SESSIONS,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "edgedl collector" not in line:
        proc.kill()
        pytest.fail(f"collector did not start: {line} {proc.stderr.read() if proc.stderr else ''}")
    url = line.split(" on ", 1)[1].split(",", 1)[0]
    wait_until(lambda: get_json(f"{url}/healthz")["mqtt_subscribed"], what="subscribed")
    return proc, url


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_and_stops_cleanly_on_a_signal(
    sig: signal.Signals,
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
) -> None:
    proc, url = _start(
        "--mqtt",
        broker.url,
        "--db",
        sqlite_url,
        "--http-port",
        "0",
        "--group",
        f"g{uuid.uuid4().hex[:6]}",
        "--client-id",
        f"c{uuid.uuid4().hex[:6]}",
        "--reference",
        str(manifest_file),
        "--shared" if sig == signal.SIGTERM else "--no-shared",
        "--fleet",
        windows.fleet,
    )
    publisher.publish_many([windows.payload("pi", seq) for seq in range(10)])
    wait_until(lambda: len(get_json(f"{url}/api/v1/windows?device=pi")) == 10, what="10 windows")
    assert get_json(f"{url}/api/v1/references")[0]["model"] == "digits"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err
    store = Store(sqlite_url)
    assert store.count_windows() == 10
    store.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "mysql://x/y"], "storage.url: unsupported database URL"),
        (["--mqtt", "http://broker"], "mqtt.url: expected mqtt://"),
        (["--config", "/nonexistent/collector.toml"], "config file not found"),
        (["--http-port", "70000"], "http.port"),
        (["--group", "a/b"], "invalid group"),
    ],
)
def test_bad_input_is_one_readable_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            EDGEDL,
            "collector",
            "run",
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--http-port",
            "0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_config_file_error_names_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "collector.toml"
    conf.write_text('[drift]\npsi_alert = "high"\n')
    proc = subprocess.run(
        [EDGEDL, "collector", "run", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "drift.psi_alert" in proc.stderr and "Traceback" not in proc.stderr


def test_a_reference_without_a_profile_is_refused(tmp_path: Path, manifest_file: Path) -> None:
    import json

    data = json.loads(manifest_file.read_text())
    data["profile"] = None
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    proc = subprocess.run(
        [
            EDGEDL,
            "collector",
            "run",
            "--db",
            f"sqlite:///{tmp_path / 'c.db'}",
            "--reference",
            str(bare),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "no reference profile" in proc.stderr and "Traceback" not in proc.stderr
