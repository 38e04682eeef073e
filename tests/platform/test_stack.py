"""The collector stack as a pod (``containers/stack.pod.yaml``), and ``edgedl demo`` against it.

Mosquitto and PostgreSQL images are built from Debian's packages on the same debootstrap
base as the collector image (:mod:`tests.platform.images`); ``podman kube play`` runs the
three on the host network on ports of the test's own (the machine runs Mosquitto and
PostgreSQL on the standard ones). ``edgedl demo --collector URL --mqtt URL`` then trains,
converts and serves the digits model on the host, starts neither collector nor broker, and
the containerised collector, storing in the containerised PostgreSQL, raises the drift alert
the demo shows. Image sizes are printed. Pod and volumes are removed whatever happens.
Skipped, with the reason, without root, podman or debootstrap.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import EDGEDL
from tests.platform.conftest import CHECKOUT
from tests.platform.images import build_context
from tests.platform.rootfs import missing_requirements
from tests.platform.stack import Stack, build_stack_images
from tests.ports import free_port

# A first run builds the base root and three images (docs/platforms.md has the times).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
TAG = "test-amd64"


@pytest.fixture(scope="module")
def stack(edgedl_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = missing_requirements("amd64", "podman", "tar", "catatonit")
    if reason:
        print(f"\ncollector stack: {reason}: skipped")
        pytest.skip(f"collector stack: {reason}")
    folder = tmp_path_factory.mktemp("stack")
    context = build_context(CHECKOUT / "pyproject.toml", edgedl_wheel, folder / "ctx")
    sizes = build_stack_images(context, TAG)
    print("\nimages: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in sizes.items()))
    running = Stack(folder, TAG, free_port(), free_port(), free_port())
    try:
        print(f"stack up (collector subscribed) in {running.up():.1f} s")
        yield running
    finally:
        running.down()


def test_the_pod_runs_healthy_services_as_non_root_users(stack: Stack) -> None:
    for service in ("mosquitto", "postgres", "collector"):
        assert stack.healthy(service), f"{service} unhealthy:\n{stack.logs()}"
    users = {s: stack.exec(s, "id", "-un") for s in ("mosquitto", "postgres", "collector")}
    assert users == {"mosquitto": "mosquitto", "postgres": "postgres", "collector": "edgedl"}
    health = httpx.get(f"{stack.url}/healthz", timeout=10).json()
    assert health["mqtt_connected"] and health["mqtt_subscribed"]


def test_demo_against_the_stack_shows_the_containerised_collectors_drift_alert(
    stack: Stack, tmp_path: Path
) -> None:
    args = ["--collector", stack.url, "--mqtt", stack.mqtt_url, "--agent-port", "0"]
    run = subprocess.run(
        [EDGEDL, "demo", *args, "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"{output}\n{stack.logs()}"
    assert f"using the collector at {stack.url}" in output
    # It started neither collector nor broker: the agent is all it stops.
    assert re.findall(r"(\w+) \(pid \d+\) stopped", output) == ["agent"], output
    match = re.search(r"drift alert fired.* on (demo-pi-[0-9a-f]{6})", output)
    assert match, output
    device = match.group(1)
    alerts = httpx.get(f"{stack.url}/api/v1/alerts", timeout=10).json()
    assert any(a["kind"] == "drift" and a["device"] == device for a in alerts), alerts
    stored = stack.exec(
        "postgres", "psql", "-h", "/tmp", "-U", "edgedl", "-d", "edgedl", "-tAc",
        f"SELECT count(*) FROM alerts WHERE kind = 'drift' AND device = '{device}'",
    )  # fmt: skip
    assert int(stored) >= 1
    print(f"\ndemo against the stack: drift alert on {device}, stored in PostgreSQL")
