"""Every shell command in README.md and docs/*.md runs, so the docs cannot rot.

Each page's commands run in order, with bash, in a fresh copy of a sandbox that holds what
the pages assume is at hand: the digits example's files (``digits.keras``, ``train.npz``,
``test.npz``, ``labels.txt``), bundles under ``bundles/``, ``images/``, an ``agent.toml``.
``export VAR=value`` holds for the page's later commands, as in one shell. Servers (``edgedl agent serve``, ``edgedl collector run``) run in the background until the
page is done, then get SIGTERM and must exit 0; ports and brokers the pages name are mapped
to the test's own (8080 -> a free agent port, 8090 -> a free collector port,
127.0.0.1:1883 -> a Mosquitto of this test). A command shown with an ``error:`` line must fail
with that error. What cannot run here is in SKIPS, each with its reason: for those the
``edgedl`` subcommands and options still have to exist (checked against the click CLI), and
benchmark flags against the script's ``--help``. A skip that no page shows any more fails,
so the list stays reviewed. Other tests check the pages' TOML (tests/agent/test_rollout_docs.py,
test_agent_config.py, ...); ``test_deploy_pages_agent_toml_is_valid`` adds the deploy pages'.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.docs_commands import (
    ROOT,
    DocCommand,
    documented_pages,
    page_commands,
    segments,
    unknown_edgedl_options,
)
from tests.mqtt_broker import MosquittoBroker
from tests.ports import free_port

ON_DEVICE = (
    "runs on the device as root (systemd, users, /opt); install-service --dry-run is run instead"
)
SERVICE = "needs the installed systemd service on a device"
PIP = "installs from the internet"
FLEET = (
    "a fleet story against a collector at collector.example.com with devices and a release "
    "key; tests/e2e/test_fleet_rollout.py runs publish, rollout, ls and status on a real fleet"
)
ROLLOUT = (
    "the rollout story against a running agent with the page's agent.toml and tokens; "
    "tests/agent/test_rollout_api.py and test_rollout_docs.py run it"
)
PLATFORM = (
    "builds Debian roots or container images as root (minutes, network at first run); "
    "tests/platform runs the same"
)
LOOP = (
    "what `edgedl demo --loop` runs, in its work folder, minutes long; "
    "tests/e2e/test_demo_loop.py runs the demo"
)
SKIPS: dict[tuple[str, str], str] = {
    **{
        ("docs/platforms.md", command): PLATFORM
        for command in (
            "sudo .venv/bin/python -m tests.platform.rootfs --arch arm64 --agent",
            "sudo .venv/bin/python -m tests.platform.rootfs --systemd --agent",
            "sudo .venv/bin/python -m pytest tests/platform -s",
            "sudo systemd-nspawn -D /var/cache/edgedl-tests/rootfs-bookworm-amd64-KEY "
            "--volatile=overlay --register=no --keep-unit -b",
            "python -m pip wheel --no-deps -w build/image/wheels . && cp pyproject.toml "
            "build/image/",
            "podman build -f containers/agent.Containerfile -t edgedl-agent build/image",
            "podman build --platform linux/arm64 -f containers/agent.Containerfile "
            "-t edgedl-agent:arm64 build/image",
            "podman build -f containers/collector.Containerfile -t edgedl-collector build/image",
            "podman build -f containers/mosquitto.Containerfile -t edgedl-mosquitto containers",
            "podman build -f containers/postgres.Containerfile -t edgedl-postgres containers",
            "podman kube play --configmap containers/stack-ports.yaml containers/stack.pod.yaml",
            "edgedl demo --collector http://127.0.0.1:8090 --mqtt mqtt://127.0.0.1:1883",
            "podman run -d --network host -v ./bundles/digits:/bundles/digits:ro "
            "-v edgedl-state:/var/lib/edgedl edgedl-agent --model /bundles/digits",
        )
    },
    **{
        ("docs/loop.md", command): LOOP
        for command in (
            "edgedl demo --loop --workdir loop",
            "edgedl collector export --db sqlite:///loop/collector.db --fleet demo --device "
            "demo-pi --since 1796070380 --labelled --output loop/export/labelled.npz",
            "edgedl collector export --db sqlite:///loop/collector.db --fleet demo --device "
            "demo-pi --since 1796070380 --output loop/export/field.npz",
            "edgedl convert loop/retrain/digits.keras --target tflite-int8 --name digits "
            "--version 2 --calibration loop/retrain/calibration.npz --validation "
            "loop/retrain/validation.npz --labels loop/digits/labels.txt --max-accuracy-drop 5 "
            "--output loop/bundles/digits-v2",
            "edgedl sign loop/bundles/digits-v2 --key loop/keys/release.key",
            "edgedl fleet publish loop/bundles/digits-v2 --collector http://127.0.0.1:8090",
            "edgedl fleet rollout digits 2 --fleet demo --strategy canary --waves 100% "
            "--probation 5 --option share=0.5 --option promote_after=30 --wait --collector "
            "http://127.0.0.1:8090",
        )
    },
    **{
        ("docs/fleet.md", command): FLEET
        for command in (
            "edgedl sign bundles/digits-v2 --key release.key",
            "edgedl fleet publish bundles/digits-v2 --collector https://collector.example.com",
            "edgedl fleet ls",
            "edgedl fleet rollout digits 2 --waves 1,10%,100% --probation 600",
            "edgedl fleet rollout digits 3 --devices pi-* --strategy shadow --min-agreement 0.95 "
            "--wait",
            "edgedl fleet status",
        )
    },
    (
        "docs/fleet.md",
        "rclone mount s3:edgedl-artifacts /var/lib/edgedl-collector/artifacts "
        "--vfs-cache-mode writes --daemon",
    ): "mounts an S3 bucket (no rclone, no bucket here)",
    ("README.md", "make demo"): "make demo runs `edgedl demo`, which tests/e2e/test_demo.py runs",
    ("README.md", "make test"): "runs the whole suite, this test included",
    ("README.md", "make test-repeat N=3"): "runs the whole suite three times, this test included",
    (
        "docs/testing.md",
        "make test-repeat N=3",
    ): "runs the whole suite three times, this test included",
    ("README.md", "pip install edgedl[convert]"): PIP,
    ("README.md", "pip install edgedl[agent]"): PIP,
    (
        "docs/converting.md",
        "pip install torch --index-url https://download.pytorch.org/whl/cpu",
    ): PIP,
    ("docs/converting.md", "pip install edgedl[torch]"): PIP,
    ("README.md", "pip install edgedl[collector]"): PIP,
    ("docs/collector.md", "pip install edgedl[collector]"): PIP,
    ("docs/collector.md", "mosquitto -c collector/edgedl/collector/mosquitto.conf"): (
        "a broker on port 1883, which the build machine's own broker holds; the tests run "
        "Mosquitto with the same settings (tests/mqtt_broker.py TUNED_SETTINGS)"
    ),
    (
        "docs/agent-telemetry.md",
        "edgedl agent serve --model digits-bundle/ --mqtt mqtts://broker.example.com "
        "--fleet factory-7 --device pi-42 --telemetry-interval 60",
    ): "needs the TLS broker at broker.example.com; tests/agent/test_telemetry_agent.py serves with these flags",
    ("docs/agent.md", "EDGEDL_AGENT__SERVER__PORT=8081 edgedl agent serve --config agent.toml"): (
        "shows an environment override; tests/agent/test_agent_config.py checks overrides"
    ),
    (
        "docs/agent.md",
        "EDGEDL_AGENT__MODELS__0__MAX_BATCH_SIZE=32 edgedl agent serve --config agent.toml",
    ): "shows an environment override; tests/agent/test_agent_config.py checks overrides",
    (
        "docs/agent.md",
        "EDGEDL_AGENT__SERVER__ADMIN_TOKEN=$(cat /etc/edgedl/token) edgedl agent serve --config agent.toml",
    ): "reads /etc/edgedl/token on a device",
    ("docs/agent.md", "edgedl agent serve --config agent.toml"): (
        "its error is for an agent.toml with port = 70000 (the page's bad file); "
        "tests/agent/test_agent_config.py checks that one-line error"
    ),
    (
        "docs/agent.md",
        'curl -s localhost:8080/v2/models/digits/infer -d { "id": "42", "inputs": [{"name": '
        '"pixels", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.0, 0.1, ...]}] }',
    ): "the tensor data is abbreviated (...); tests/agent/test_serving.py sends whole requests",
    (
        "docs/agent.md",
        "sudo edgedl agent install-service --config /etc/edgedl/agent.toml",
    ): ON_DEVICE,
    (
        "docs/pipelines.md",
        "edgedl agent run-pipeline --config agent.toml --input recording.wav",
    ): "needs the page's pipeline config and a recording; tests/agent/test_pipeline_cli.py runs it",
    (
        "docs/pipelines.md",
        "arecord -f S16_LE -r 16000 -c 1 | edgedl agent run-pipeline --config agent.toml --input -",
    ): "needs a microphone; tests/agent/test_pipeline_cli.py feeds stdin",
    (
        "docs/pipelines.md",
        "edgedl agent run-pipeline --config agent.toml --pipeline keywords --input a.wav --json",
    ): "needs the page's pipeline config and a recording; tests/agent/test_pipeline_cli.py runs it",
    ("docs/rollout.md", "edgedl agent serve --config agent.toml &"): ROLLOUT,
    (
        "docs/rollout.md",
        "edgedl agent deploy bundles/digits-v2 --strategy canary --share 0.5 --promote-after 20",
    ): ROLLOUT,
    ("docs/rollout.md", "edgedl agent status"): ROLLOUT,
    ("docs/rollout.md", "edgedl agent rollback"): ROLLOUT,
    (
        "docs/rollout.md",
        "curl -s -X POST localhost:8080/v2/admin/deploy -H Authorization: Bearer "
        '$EDGEDL_ADMIN_TOKEN -d {"bundle": "/opt/bundles/digits-v3", "strategy": "bluegreen", '
        '"probation_requests": 200, "max_p95_ms": 30}',
    ): ROLLOUT,
    ("docs/rollout.md", "tar -cf digits-v3.tar -C bundles digits-v3"): ROLLOUT,
    (
        "docs/rollout.md",
        "curl -s -X POST localhost:8080/v2/admin/deploy?strategy=shadow -H Authorization: "
        "Bearer $EDGEDL_ADMIN_TOKEN -H Content-Type: application/x-tar --data-binary @digits-v3.tar",
    ): ROLLOUT,
    (
        "docs/rollout.md",
        "curl -s localhost:8080/v2/admin/status -H Authorization: Bearer $EDGEDL_ADMIN_TOKEN",
    ): ROLLOUT,
    ("docs/rollout.md", "edgedl agent deploy bundles/digits-v3"): (
        "its error needs a tampered bundles/digits-v3; tests/agent/test_rollout_api.py tampers one"
    ),
    ("docs/rollout.md", "edgedl agent rollback --token wrong"): ROLLOUT,
    ("docs/rollout.md", "edgedl agent rollback --model nope"): ROLLOUT,
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py",
    ): "a benchmark (minutes); never part of the test run",
    ("docs/performance.md", ".venv/bin/python bench/convert.py --models digits"): "a benchmark",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models torch-digits",
    ): "a benchmark",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models efficientnet-lite0 --targets auto "
        "--calibration-samples 100 --validation-samples 100",
    ): "a benchmark (40 minutes on a loaded 2-core machine)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models efficientnet-lite0 --targets "
        "tflite-fp32,tflite-fp16,tflite-dynamic,tflite-int8,auto --auto-device rpi5 "
        "--calibration-samples 100 --validation-samples 100 "
        "--out bench/results/convert-effl0-tflite.json",
    ): "a benchmark (40 minutes on a loaded 2-core machine)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/litert_int8_paths.py --calibration-samples 100 "
        "--validation-samples 100",
    ): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/litert_int8_mixed.py --calibration-samples 64 "
        "--validation-samples 64 --keep 1,2,3,5,10,20",
    ): "a benchmark (minutes)",
    ("docs/performance.md", ".venv/bin/python bench/telemetry.py"): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/telemetry.py --only ingest_direct,ingest_mqtt,drift --devices 1000 --windows 20",
    ): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/telemetry.py --only wire,agent_cpu",
    ): "a benchmark",
    ("docs/performance.md", ".venv/bin/python bench/agent.py"): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/protocols.py --seconds 3 --models image-224",
    ): "a benchmark",
    ("docs/performance.md", ".venv/bin/python bench/json_decode.py --seconds 3"): "a benchmark",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models efficientnet-lite0 --targets "
        "onnx-fp32,onnx-int8,onnx-int8-u8u8 --calibration-samples 100 --validation-samples 100",
    ): "a benchmark (minutes)",
    (
        "docs/performance.md",
        "EDGEDL_MLSERVER=/opt/mlserver/bin/mlserver .venv/bin/python bench/peer_mlserver.py "
        "--seconds 3 --rounds 2",
    ): "a benchmark against MLServer, installed in a venv of its own (not here)",
    ("docs/performance.md", "apt-get install wrk"): (
        "installs a Debian package (root and the mirror); the MLServer benchmark's load generator"
    ),
    ("docs/performance.md", "sudo .venv/bin/python -m pytest tests/platform -s"): (
        "the platform tests run in make test (tests/platform)"
    ),
    (
        "docs/performance.md",
        ".venv/bin/python bench/telemetry.py --only ingest_direct --out /tmp/ingest.json",
    ): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/telemetry.py --only ingest_group --collectors 1,3 "
        "--devices 1000 --windows 10",
    ): "a benchmark (minutes)",
    ("docs/performance.md", ".venv/bin/python bench/compress.py"): "a benchmark (minutes)",
    ("docs/performance.md", ".venv/bin/python bench/compress.py --models kws"): "a benchmark",
    ("docs/performance.md", ".venv/bin/python bench/convert.py --models kws"): "a benchmark",
    ("docs/performance.md", ".venv/bin/python bench/onnx_int8_cpus.py"): "a benchmark",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models minilm --targets "
        "onnx-fp32,onnx-dynamic,onnx-int8,onnx-fp16 --calibration-samples 100 "
        "--validation-samples 100",
    ): "a benchmark (15 minutes on a loaded 2-core machine)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models minilm --targets auto "
        "--calibration-samples 100 --validation-samples 100 "
        "--out bench/results/convert-minilm-auto.json",
    ): "a benchmark (3 minutes on a loaded 2-core machine)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/convert.py --models minilm --targets auto --auto-device rpi5 "
        "--calibration-samples 100 --validation-samples 100 "
        "--out bench/results/convert-minilm-auto-rpi5.json",
    ): "a benchmark (2 minutes on a loaded 2-core machine)",
    ("docs/performance.md", ".venv/bin/python bench/compress.py --models minilm"): (
        "a benchmark (minutes)"
    ),
    ("docs/performance.md", ".venv/bin/python bench/drift_power.py"): "a benchmark (minutes)",
    ("docs/performance.md", ".venv/bin/python bench/vad.py"): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/asr.py --voices en-us,en-us+f2 --speeds 140,170 --snr quiet,20,10 --sentences 3 --gap-s 1.5",
    ): "a benchmark (half an hour)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/agent.py --seconds 1 --models digits-onnx --throughput-models digits-onnx",
    ): "a benchmark",
    ("docs/performance.md", ".venv/bin/python bench/agent_memory.py"): "a benchmark (minutes)",
    ("docs/performance.md", ".venv/bin/python bench/loadtest.py --seconds 8 --block 0.5"): (
        "a benchmark (minutes)"
    ),
    ("docs/performance.md", ".venv/bin/python bench/protocols.py"): "a benchmark (minutes)",
    (
        "docs/performance.md",
        ".venv/bin/python bench/protocols.py --seconds 1 --models image-224",
    ): "a benchmark",
    ("docs/performance.md", ".venv/bin/python bench/agent_memory.py --requests 3"): "a benchmark",
    (
        "docs/performance.md",
        ".venv/bin/python bench/agent_memory.py --requests 3 --no-budget --label before "
        "--pythonpath $OLD/sdk:$OLD/device_agent",
    ): "a benchmark of another checkout",
}
for _page in ("docs/deploy-raspberry-pi.md", "docs/deploy-jetson.md"):
    SKIPS.update(
        {
            (_page, "sudo python3 -m venv /opt/edgedl"): ON_DEVICE,
            (_page, "sudo /opt/edgedl/bin/pip install edgedl[agent]"): PIP,
            (
                _page,
                "sudo /opt/edgedl/bin/edgedl agent install-service --config /etc/edgedl/agent.toml",
            ): ON_DEVICE,
            (
                _page,
                "sudo useradd --system --no-create-home --shell /usr/sbin/nologin edgedl",
            ): ON_DEVICE,
            (_page, "sudo install -d -o edgedl -g edgedl /var/lib/edgedl"): ON_DEVICE,
            (_page, "sudo systemctl daemon-reload"): ON_DEVICE,
            (_page, "sudo systemctl enable --now edgedl-agent"): ON_DEVICE,
            (
                _page,
                "curl -s -o /dev/null -w %{http_code}\\n http://127.0.0.1:8080/v2/health/ready",
            ): SERVICE,
            (_page, "systemctl status edgedl-agent"): SERVICE,
            (_page, "journalctl -u edgedl-agent -f"): SERVICE,
        }
    )
SKIPS.update(
    {
        ("docs/deploy-raspberry-pi.md", "sudo apt install python3-venv"): ON_DEVICE,
        ("docs/deploy-jetson.md", "sudo /opt/edgedl/bin/pip uninstall -y onnxruntime"): ON_DEVICE,
        ("docs/deploy-jetson.md", "sudo /opt/edgedl/bin/pip install onnxruntime_gpu-*.whl"): (
            "NVIDIA's wheel for a JetPack, on a Jetson"
        ),
        ("docs/deploy-jetson.md", "sudo usermod -aG video edgedl"): ON_DEVICE,
        ("docs/deploy-jetson.md", "tegrastats"): "a Jetson tool",
    }
)

FLEET = (
    "needs a collector serving fleet rollouts to agents; tests/e2e/test_fleet_rollout.py runs it"
)
SKIPS.update(
    {
        ("docs/fleet.md", "edgedl sign bundles/digits-v2 --key release.key"): (
            "release.key comes from `edgedl keys generate`; docs/security.md's signing runs here"
        ),
        (
            "docs/fleet.md",
            "edgedl fleet publish bundles/digits-v2 --collector https://collector.example.com",
        ): FLEET,
        ("docs/fleet.md", "edgedl fleet ls"): FLEET,
        (
            "docs/fleet.md",
            "edgedl fleet rollout digits 2 --waves 1,10%,100% --probation 600",
        ): FLEET,
        (
            "docs/fleet.md",
            "edgedl fleet rollout digits 3 --devices pi-* --strategy shadow --min-agreement 0.95 --wait",
        ): FLEET,
        ("docs/fleet.md", "edgedl fleet status"): FLEET,
        (
            "docs/fleet.md",
            "rclone mount s3:edgedl-artifacts /var/lib/edgedl-collector/artifacts "
            "--vfs-cache-mode writes --daemon",
        ): "mounts an S3 bucket",
    }
)

AGENT_TOML = '[[models]]\npath = "bundles/digits"\n'
SERVERS = {
    ("agent", "serve"): "/v2/health/ready",
    ("collector", "run"): "/healthz",
}


def all_commands() -> list[DocCommand]:
    return [c for page in documented_pages() for c in page_commands(page)]


def pages_with_commands() -> list[str]:
    return sorted({c.page for c in all_commands()})


@pytest.fixture(scope="module")
def sandbox(
    digits: Any, digits_bundle: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """What the pages assume is at hand, built once; each page gets a copy."""
    base = tmp_path_factory.mktemp("docs-sandbox")
    for path in (digits.model, digits.train, digits.test, digits.labels):
        shutil.copy(path, base / Path(path).name)
    bundles = base / "bundles"
    bundles.mkdir()
    shutil.copytree(digits_bundle("tflite-int8", version="2"), bundles / "digits-v2")
    shutil.copytree(digits_bundle("tflite-int8"), bundles / "digits-int8")
    (base / "images").mkdir()
    with np.load(digits.test) as data:
        np.savez(base / "images" / "a.npz", x=data["x"][:40])
    (base / "agent.toml").write_text(AGENT_TOML, encoding="utf-8")
    return base


class PageRun:
    """A page's commands, run one after the other in the page's own copy of the sandbox."""

    def __init__(self, folder: Path, broker: MosquittoBroker) -> None:
        self.folder = folder
        self.ports = {"8080": free_port(), "8090": free_port()}
        self.broker = broker
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.servers: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def localise(self, text: str) -> str:
        """The command with the page's ports and broker mapped to this test's."""
        text = text.replace("127.0.0.1:1883", f"127.0.0.1:{self.broker.port}")
        for port, mine in self.ports.items():
            text = re.sub(rf"\b{port}\b", str(mine), text)
        return text

    def run(self, command: DocCommand) -> None:
        text = self.localise(command.text)
        export = re.fullmatch(r"export ([A-Za-z_][A-Za-z0-9_]*)=(\S*)", text.strip())
        if export is not None:  # the page's later commands run with it, as in one shell
            self.env[export[1]] = export[2]
            return
        server = next(
            (path for (a, b), path in SERVERS.items() if re.search(rf"\bedgedl {a} {b}\b", text)),
            None,
        )
        if server is not None and command.documented_error is None:
            self.start_server(command, text, server)
            return
        done = subprocess.run(
            ["bash", "-c", text],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        where = (
            f"{command}\nstdout: {done.stdout[-2000:]}\nstderr: {done.stderr[-2000:]}\n"
            "(fix the page or the code; a command that cannot run on a build machine goes in "
            "SKIPS with its reason)"
        )
        if command.documented_error is None:
            assert done.returncode == 0, where
            return
        assert done.returncode != 0, where
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, where
        assert lines[0].split()[:4] == command.documented_error.split()[:4], where

    def start_server(self, command: DocCommand, text: str, ready_path: str) -> None:
        port = self.ports["8090" if ready_path == "/healthz" else "8080"]
        log = self.folder / f"server-{command.line}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", text],
                cwd=self.folder,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # SIGTERM goes to the server, not only to bash
            )
        self.servers.append((str(command), proc, log))
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"{command} exited:\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"{command} not ready:\n{log.read_text()}"
            try:
                response = httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1)
                if response.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

    def stop_servers(self) -> list[str]:
        """SIGTERM every server; return those that did not exit 0."""
        failed = []
        for name, proc, log in reversed(self.servers):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait(10)
            if code != 0:
                failed.append(f"{name} exited {code}:\n{log.read_text(errors='replace')[-2000:]}")
        self.servers.clear()
        return failed


@pytest.fixture
def page_run(sandbox: Path, tmp_path: Path) -> Iterator[PageRun]:
    folder = tmp_path / "sandbox"
    shutil.copytree(sandbox, folder)
    with MosquittoBroker(tmp_path / "broker") as broker:
        run = PageRun(folder, broker)
        try:
            yield run
        finally:
            run.stop_servers()


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_commands())
def test_every_command_of_the_page_runs(page: str, page_run: PageRun) -> None:
    ran = 0
    for command in (c for c in all_commands() if c.page == page):
        if (command.page, command.key) in SKIPS:
            continue
        page_run.run(command)
        ran += 1
    assert page_run.stop_servers() == []
    if page in ("README.md", "docs/deploy-raspberry-pi.md", "docs/deploy-jetson.md"):
        assert ran >= 4, "these pages are meant to run here, not to be skipped"


def test_every_skipped_command_still_names_real_commands_and_options() -> None:
    problems = []
    for command in all_commands():
        if (command.page, command.key) not in SKIPS:
            continue
        for words in segments(command.text):
            program = words[0].rsplit("/", 1)[-1]
            if program == "edgedl":
                unknown = unknown_edgedl_options(words)
                if unknown:
                    problems.append(f"{command}: unknown {unknown}")
            elif program == "python" and len(words) > 1 and words[1].startswith("bench/"):
                usage = subprocess.run(
                    [sys.executable, str(ROOT / words[1]), "--help"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    cwd=ROOT,
                ).stdout
                missing = [w for w in words[2:] if w.startswith("--") and w not in usage]
                if missing:
                    problems.append(f"{command}: {words[1]} --help lacks {missing}")
            elif program == "make":
                makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
                if not re.search(rf"^{re.escape(words[1])}:", makefile, re.M):
                    problems.append(f"{command}: no make target {words[1]}")
    assert problems == []


def test_the_skip_list_names_only_commands_the_pages_show() -> None:
    shown = {(c.page, c.key) for c in all_commands()}
    # A page not written yet (another change in flight) has nothing to go stale.
    listed = {(page, key) for page, key in SKIPS if (ROOT / page).exists()}
    assert sorted(listed - shown) == []


def test_unknown_options_are_caught() -> None:
    """The parse check is not vacuous: a wrong flag or subcommand is reported."""
    assert unknown_edgedl_options(["edgedl", "agent", "serve", "--prot", "8080"]) == ["--prot"]
    assert unknown_edgedl_options(["edgedl", "agnet", "serve"]) == ["command 'agnet'"]
    assert unknown_edgedl_options(["edgedl", "agent", "serve", "--port", "8080"]) == []


@pytest.mark.parametrize("page", ["docs/deploy-raspberry-pi.md", "docs/deploy-jetson.md"])
def test_deploy_pages_agent_toml_is_valid(page: str, tmp_path: Path) -> None:
    from edgedl.agent.config import load_config

    [toml] = re.findall(r"```toml\n(.*?)```", (ROOT / page).read_text(encoding="utf-8"), re.S)
    path = tmp_path / "agent.toml"
    path.write_text(toml, encoding="utf-8")
    config = load_config(path, env={})
    assert config.telemetry.mqtt is not None and config.telemetry.mqtt.startswith("mqtts://")
    assert config.server.admin_token_file == "/etc/edgedl/admin-token"
