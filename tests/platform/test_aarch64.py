"""The agent on aarch64: an arm64 Debian bookworm root run under qemu-user emulation.

The root file system (debootstrap) and the agent's venv in it (``pip install`` of the
agent extra's requirements, aarch64 wheels from PyPI) are cached outside the clone
(:mod:`tests.platform.rootfs`); every run installs this checkout's edgedl wheel there and
runs real digits bundles through ``edgedl agent serve`` (HTTP from the host: a chroot
shares the host network) and a real pipeline through ``edgedl agent run-pipeline``, and
compares what comes out with the same on x86. Skipped, with the reason, where the machine
cannot run arm64 binaries as root.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from edgedl import runtime
from tests.agent.pipeline_fixtures import loudness_bundle, pipeline_toml, speak, words_with_gaps
from tests.agent.serving_helpers import digit_images, json_request, output_of
from tests.conftest import run_edgedl
from tests.platform.conftest import CHECKOUT
from tests.platform.rootfs import (
    PYTHON_PACKAGES,
    RootfsSpec,
    chroot_argv,
    ensure_agent_venv,
    ensure_rootfs,
    install_wheel,
    locked,
    missing_requirements,
)
from tests.ports import free_port

# The first run builds the root and installs the agent under emulation: far beyond the
# suite's 900 s per test on a busy 2-core machine (docs/platforms.md has the times).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ARCH = "arm64"


@dataclass
class Arm64Root:
    """The arm64 root with the agent installed: where it is and the venv inside it."""

    path: Path
    venv: str
    install_s: float

    def argv(self, *args: str) -> list[str]:
        return chroot_argv(self.path, [f"{self.venv}/bin/edgedl", *args])

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        argv = chroot_argv(self.path, [f"{self.venv}/bin/python", "-c", code])
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    def put(self, source: Path, name: str) -> str:
        """Copy ``source`` (a file or folder) to /tmp/edgedl-test/NAME inside; its path there."""
        target = self.path / "tmp/edgedl-test" / name
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
        return f"/tmp/edgedl-test/{name}"


@pytest.fixture(scope="module")
def arm64(edgedl_wheel: Path) -> Iterator[Arm64Root]:
    reason = missing_requirements(ARCH, "unshare", "chroot")
    if reason:
        pytest.skip(f"aarch64 check: {reason}")
    started = time.monotonic()
    root = ensure_rootfs(RootfsSpec(ARCH, PYTHON_PACKAGES))
    venv, install_s = ensure_agent_venv(root, CHECKOUT / "pyproject.toml")
    # One run at a time uses this root (another CI run on the machine waits here).
    with locked(root.with_name(root.name + ".use.lock")):
        install_wheel(root, venv, edgedl_wheel)
        print(
            f"\naarch64 root ready in {time.monotonic() - started:.1f} s (the agent's "
            f"requirements took {install_s:.0f} s to install under emulation, once)"
        )
        try:
            yield Arm64Root(root, venv, install_s)
        finally:
            shutil.rmtree(root / "tmp/edgedl-test", ignore_errors=True)


def test_the_root_is_aarch64_and_tensorflow_and_torch_are_absent(arm64: Arm64Root) -> None:
    probe = arm64.python(
        "import importlib.util, platform, json; "
        "print(json.dumps([platform.machine(), "
        "[m for m in ('tensorflow', 'torch', 'keras') if importlib.util.find_spec(m)]]))"
    )
    assert probe.returncode == 0, probe.stderr
    machine, heavy = json.loads(probe.stdout)
    assert machine == "aarch64"
    assert heavy == []
    imported = arm64.python("import edgedl.agent.serve, edgedl.runtime; import tensorflow")
    assert "No module named 'tensorflow'" in imported.stderr


class ArmAgent:
    """``edgedl agent serve`` in the arm64 root, answering on a host port."""

    def __init__(self, root: Arm64Root, bundle: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            root.argv("agent", "serve", "--port", str(self.port), "--model", bundle),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 240) -> float:
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.output}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return time.monotonic() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"agent not ready after {timeout} s: {self.output}")

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


@pytest.mark.parametrize("target", ["tflite-int8", "onnx-int8"])
def test_serve_answers_digits_like_x86(
    arm64: Arm64Root, digits_bundle: Any, target: str, tmp_path: Path
) -> None:
    bundle = digits_bundle(target)
    inside = arm64.put(bundle, target)
    x = digit_images(32)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    agent = ArmAgent(arm64, inside, tmp_path / "agent.log")
    try:
        ready_s = agent.wait_ready()
        response = httpx.post(
            f"{agent.url}/v2/models/digits/infer", json=json_request("pixels", x), timeout=120
        )
        assert response.status_code == 200, response.text
        got = output_of(response, "output_0")
        rss = agent.rss_mb()
    finally:
        code = agent.stop()
    assert code == 0, agent.output
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    diff = float(np.abs(got - expected).max())
    # int8 kernels accumulate and requantize differently on arm64 (NEON) than on x86: the
    # softmax output (steps of 1/255) may move by a step or two, never the prediction.
    assert diff <= 2 / 255 + 1e-6, diff
    print(
        f"\naarch64 {target}: ready in {ready_s:.1f} s under emulation, RSS {rss:.0f} MB "
        f"(qemu included), 32/32 predictions equal to x86, max |diff| {diff:.2g}"
    )


def test_run_pipeline_finds_the_same_events_as_x86(arm64: Arm64Root, tmp_path: Path) -> None:
    words = words_with_gaps([speak(w, tmp_path) for w in ("yes", "seven", "stop")])
    wav = words.save(tmp_path / "words.wav")
    bundle = loudness_bundle(tmp_path / "bundle")
    host_config = tmp_path / "agent.toml"
    host_config.write_text(pipeline_toml(bundle, engine="webrtc"))
    host = run_edgedl("agent", "run-pipeline", "--config", host_config, "--input", wav, "--json")
    assert host.code == 0, host.stderr

    inside_bundle = arm64.put(bundle, "loudness")
    inside_wav = arm64.put(wav, "words.wav")
    config = tmp_path / "arm64.toml"
    config.write_text(pipeline_toml(Path(inside_bundle), engine="webrtc"))
    inside_config = arm64.put(config, "agent.toml")
    arm = subprocess.run(
        arm64.argv(
            "agent", "run-pipeline", "--config", inside_config, "--input", inside_wav, "--json"
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert arm.returncode == 0, arm.stderr
    host_events = [json.loads(line) for line in host.stdout.splitlines()]
    arm_events = [json.loads(line) for line in arm.stdout.splitlines()]
    assert len(host_events) == len(words.speech)
    assert [(e["label"], e["start"], e["end"]) for e in arm_events] == [
        (e["label"], e["start"], e["end"]) for e in host_events
    ]
    for a, b in zip(arm_events, host_events, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
