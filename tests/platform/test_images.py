"""The container images: built with podman from a debootstrap base, run with the host network.

The agent image (amd64, and arm64 under qemu) serves a digits bundle mounted read-only,
keeps its store on a named volume, runs as a non-root user and passes its health check; the
collector image answers its health check against the local Mosquitto with its SQLite
database on a volume. Images are built by :mod:`tests.platform.images` (cached layers
outside the clone); their sizes are printed. Containers and volumes are removed whatever
happens. Skipped, with the reason, without root, podman or (for arm64) binfmt_misc.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgedl import runtime
from tests.agent.serving_helpers import digit_images, json_request, output_of
from tests.platform.conftest import CHECKOUT
from tests.platform.images import (
    build_context,
    build_image,
    image_size_mb,
    limit_flags,
    podman,
    podman_argv,
)
from tests.platform.rootfs import host_arch, missing_requirements
from tests.ports import free_port

# The first run builds the root and installs the agent under emulation: far beyond the
# suite's 900 s per test on a busy 2-core machine (docs/platforms.md has the times).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def context(edgedl_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_context(CHECKOUT / "pyproject.toml", edgedl_wheel, tmp_path_factory.mktemp("ctx"))


def image(context: Path, containerfile: str, name: str, arch: str) -> str:
    reason = missing_requirements(arch, "podman", "tar")
    if reason:
        pytest.skip(f"container images: {reason}")
    tag = f"localhost/edgedl-{name}:test-{arch}"
    started = time.monotonic()
    build_image(containerfile, context, tag, arch)
    print(
        f"\nimage {tag}: {image_size_mb(tag):.0f} MB, built in {time.monotonic() - started:.0f} s"
    )
    return tag


def emulation_flags(arch: str) -> list[str]:
    """Under qemu-user, hide the host's CPU topology in /sys (docs/platforms.md: cpuinfo in
    ONNX Runtime and LiteRT crashes the emulated process on it); nothing on a real device."""
    return [] if arch == host_arch() else ["--security-opt=mask=/sys/devices/system/cpu"]


class Container:
    """A detached container and its volume, removed by :meth:`remove`."""

    def __init__(self, tag: str, state: str, args: list[str], command: list[str]) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.name = f"edgedl-test-{suffix}"
        self.volume = f"edgedl-test-{suffix}"
        podman("volume", "create", self.volume)
        podman(
            "run",
            "--detach",
            "--network=host",
            f"--name={self.name}",
            *limit_flags(),
            f"--volume={self.volume}:{state}",
            *args,
            tag,
            *command,
        )

    def wait_http(self, url: str, timeout: float = 240) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            state = podman("inspect", "--format", "{{.State.Status}}", self.name)
            if state != "running":
                raise AssertionError(f"container {state}: {self.logs()}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{url} not 200 within {timeout} s: {self.logs()}")

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            podman_argv("exec", self.name, *argv), capture_output=True, text=True, timeout=120
        )

    def healthy(self) -> bool:
        """Run the image's HEALTHCHECK now (no systemd timer here); True when it passed."""
        ran = subprocess.run(
            podman_argv("healthcheck", "run", self.name),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return ran.returncode == 0

    def logs(self) -> str:
        return subprocess.run(
            podman_argv("logs", self.name), capture_output=True, text=True, timeout=60
        ).stdout[-3000:]

    def stop(self) -> int:
        podman("stop", "--time=30", self.name)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name))

    def remove(self) -> None:
        podman("rm", "--force", "--time=5", self.name, check=False)
        podman("volume", "rm", "--force", self.volume, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for container in made:
        container.remove()


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_agent_image_serves_a_read_only_bundle_as_non_root(
    arch: str,
    context: Path,
    digits_bundle: Any,
    containers: list[Container],
    tmp_path: Path,
) -> None:
    tag = image(context, "agent.Containerfile", "agent", arch)
    bundle = tmp_path / "digits"
    shutil.copytree(digits_bundle("onnx-int8"), bundle)
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    port = free_port()
    agent = Container(
        tag,
        "/var/lib/edgedl",
        [
            f"--volume={bundle}:/bundles/digits:ro",
            *emulation_flags(arch),
            f"--env=EDGEDL_AGENT__SERVER__PORT={port}",
            "--env=EDGEDL_AGENT__SERVER__HOST=127.0.0.1",
        ],
        ["--model", "/bundles/digits"],
    )
    containers.append(agent)
    url = f"http://127.0.0.1:{port}"
    ready_s = agent.wait_http(f"{url}/v2/health/ready")
    assert agent.healthy()
    x = digit_images(16)
    response = httpx.post(
        f"{url}/v2/models/digits/infer", json=json_request("pixels", x), timeout=60
    )
    assert response.status_code == 200, response.text
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    np.testing.assert_array_equal(output_of(response, "output_0").argmax(1), expected.argmax(1))
    assert agent.exec("id", "-u").stdout.strip() == "10001"
    denied = agent.exec("touch", "/bundles/digits/probe")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert agent.exec("touch", "/var/lib/edgedl/probe").returncode == 0
    assert agent.stop() == 0, agent.logs()
    print(f"\n{tag}: ready in {ready_s:.1f} s, healthy, uid 10001, read-only bundle")


def test_collector_image_is_healthy_on_the_local_broker_with_state_on_a_volume(
    context: Path, containers: list[Container]
) -> None:
    tag = image(context, "collector.Containerfile", "collector", "amd64")
    port = free_port()
    collector = Container(
        tag,
        "/var/lib/edgedl-collector",
        [
            "--env=EDGEDL_COLLECTOR__MQTT__URL=mqtt://127.0.0.1:1883",
            f"--env=EDGEDL_COLLECTOR__MQTT__GROUP=edgedl-image-test-{port}",
            f"--env=EDGEDL_COLLECTOR__HTTP__PORT={port}",
            "--env=EDGEDL_COLLECTOR__HTTP__HOST=127.0.0.1",
        ],
        [],
    )
    containers.append(collector)
    ready_s = collector.wait_http(f"http://127.0.0.1:{port}/healthz")
    assert collector.healthy()
    assert collector.exec("id", "-u").stdout.strip() == "10002"
    stored = collector.exec("ls", "/var/lib/edgedl-collector")
    assert "collector.db" in stored.stdout, stored
    assert collector.stop() == 0, collector.logs()
    print(f"\n{tag}: healthy in {ready_s:.1f} s, uid 10002, SQLite on the volume")
