"""Machinery for fleet rollout tests and bench/fleet.py: a broker, a collector and agents,
each its own process, with signed digits versions and a steady stream of requests.

* :func:`signed_versions`: copies of a digits bundle as versions, signed with a test key;
* :func:`start_device`: ``edgedl agent serve`` following its desired state (``[fleet]``);
* :class:`Traffic`: a thread sending real digits to every running agent;
* :class:`CuttingProxy`: an HTTP server in front of the collector that cuts the first
  download of each bundle after half its bytes, and records every request's Range header.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tests.agent.conftest import AgentProcess
from tests.mqtt_broker import MosquittoBroker

from edgedl.bundle import MANIFEST_FILE, Bundle
from edgedl.signing import generate_keys, sign_bundle

FLEET = "plant-3"

AGENT_TOML = """
[store]
path = "{store}"

[security]
trusted_keys = ["{trusted}"]

[telemetry]
spool_path = "{spool}"
keepalive_s = 5
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[fleet]
updates = true
min_free_mb = {min_free_mb}
retry_min_s = 0.2
retry_max_s = 1.0
status_interval_s = 0.5
"""

COLLECTOR_TOML = """
[fleet]
artifacts_path = "{artifacts}"
{public_url}
tick_s = 0.2
{fleet_extra}
probation_s = {probation_s}
arrival_timeout_s = 90
{trusted}

[fleet.gates]
min_inferences = 5
min_compared = 10
# Five agents, a collector and a broker share a 2-core machine with the rest of the suite: a
# healthy version's p95 can read several times the previous one's there. The latency gate's
# own test is tests/collector/test_fleet_gates.py; here it only stops a grossly slow version.
max_p95_ratio = 50.0
"""


@dataclass
class Keys:
    """The fleet's release key pair and a key nobody trusts."""

    private: Path
    public: Path
    other_private: Path


def make_keys(folder: Path) -> Keys:
    """A release key pair and an unknown one, in ``folder``."""
    private, public = generate_keys("release", folder)
    other, _ = generate_keys("intruder", folder)
    return Keys(private, public, other)


def as_version(bundle: Path, out: Path, version: str) -> Path:
    """A copy of ``bundle`` under another version (same model file), unsigned."""
    dest = out / f"{Bundle.open(bundle).manifest.name}-v{version}"
    shutil.copytree(bundle, dest)
    (dest / "signature.json").unlink(missing_ok=True)
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    manifest["version"] = version
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest))
    return dest


def signed_versions(bundle: Path, out: Path, key: Path, versions: list[str]) -> dict[str, Path]:
    """``{version: bundle dir}``: copies of ``bundle``, each signed with ``key``."""
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for version in versions:
        path = as_version(bundle, out, version)
        sign_bundle(path, key)
        made[version] = path
    return made


def collector_toml(
    folder: Path,
    probation_s: float,
    public_url: str | None = None,
    trusted: Path | None = None,
    fleet_extra: str = "",
) -> Path:
    """A collector.toml with the fleet settings of the tests (``fleet_extra``: more lines of
    its ``[fleet]`` table)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "collector.toml"
    path.write_text(
        COLLECTOR_TOML.format(
            artifacts=folder / "artifacts",
            public_url=f'public_url = "{public_url}"' if public_url else "",
            probation_s=probation_s,
            trusted=f'trusted_keys = ["{trusted}"]' if trusted else "",
            fleet_extra=fleet_extra,
        )
    )
    return path


def start_device(
    agent_process: Callable[..., AgentProcess],
    folder: Path,
    device: str,
    bundle: Path,
    broker: MosquittoBroker,
    trusted: Path,
    min_free_mb: float = 1.0,
    wait: bool = True,
) -> AgentProcess:
    """An agent serving ``bundle`` as ``device`` of :data:`FLEET`, following its desired state."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "agent.toml"
    config.write_text(
        AGENT_TOML.format(
            store=folder / "store",
            trusted=trusted,
            spool=folder / "spool.db",
            min_free_mb=min_free_mb,
        )
    )
    return agent_process(
        "--config", config, "--model", bundle, "--mqtt", broker.url,
        "--fleet", FLEET, "--device", device, "--telemetry-interval", "0.5",
        wait=wait,
    )  # fmt: skip


def digit_batch(n: int = 4) -> np.ndarray[Any, Any]:
    """Real held-out digits, shaped (n, 8, 8, 1), in [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().images[-n:] / 16.0).astype(np.float32)[..., None]


def served_version(agent: AgentProcess, model: str = "digits") -> str | None:
    """The version that answers a request to ``model`` on ``agent`` now (None if none)."""
    try:
        meta = httpx.get(f"{agent.url}/v2/models/{model}", timeout=5).json()
        data = digit_batch(1)
        body = {
            "inputs": [
                {
                    "name": meta["inputs"][0]["name"],
                    "shape": list(data.shape),
                    "datatype": "FP32",
                    "data": data.ravel().tolist(),
                }
            ]
        }
        response = httpx.post(f"{agent.url}/v2/models/{model}/infer", json=body, timeout=10)
        response.raise_for_status()
        return str(response.json()["model_version"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


class Traffic:
    """Sends batches of real digits to every agent in ``agents`` until stopped."""

    def __init__(self, agents: dict[str, AgentProcess], interval_s: float = 0.1) -> None:
        self.agents = agents
        self.interval_s = interval_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        images = digit_batch(4)
        clients: dict[str, Any] = {}
        while not self._stop.wait(self.interval_s):
            for device, agent in list(self.agents.items()):
                if agent.proc.poll() is not None:
                    clients.pop(device, None)
                    continue
                try:
                    client = clients.setdefault(device, agent.client(timeout=10))
                    client.infer("digits", images)
                    self.sent += 1
                except Exception:  # an agent that is starting, stopping or switching
                    clients.pop(device, None)


@dataclass
class ProxyRequest:
    """One request the proxy saw."""

    path: str
    range: str | None
    sent: int = 0
    cut: bool = False


@dataclass
class CuttingProxy:
    """Forwards GETs to ``target``; the first GET of each ``.tar`` is cut after half its bytes."""

    target: str = ""
    requests: list[ProxyRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                seen = ProxyRequest(self.path, self.headers.get("Range"))
                first = self.path.endswith(".tar") and not any(
                    r.path == self.path for r in proxy.requests
                )
                proxy.requests.append(seen)
                headers = {"Range": seen.range} if seen.range else {}
                with httpx.stream("GET", proxy.target + self.path, headers=headers) as up:
                    self.send_response(up.status_code)
                    for key in ("content-type", "content-length", "content-range", "accept-ranges"):
                        if key in up.headers:
                            self.send_header(key, up.headers[key])
                    self.end_headers()
                    limit = int(up.headers.get("content-length", "0")) // 2 if first else None
                    for chunk in up.iter_bytes(8192):
                        if limit is not None and seen.sent + len(chunk) > limit:
                            self.wfile.write(chunk[: limit - seen.sent])
                            seen.sent = limit
                            seen.cut = True
                            self.wfile.flush()
                            self.connection.shutdown(socket.SHUT_RDWR)
                            self.close_connection = True
                            return
                        self.wfile.write(chunk)
                        seen.sent += len(chunk)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until truthy; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def disagreeing_version(like: Path, out: Path, version: str) -> Path:
    """An ONNX bundle with ``like``'s inputs and outputs that always answers class 0.

    Real and fast: a shadow deployment of it disagrees with the digits model on about nine
    samples in ten.
    """
    from onnx import TensorProto, helper, numpy_helper

    from edgedl.bundle import Manifest, sha256_file, write_bundle

    m = Bundle.open(like).manifest
    inp, outp = m.inputs[0], m.outputs[0]
    pixels = int(np.prod(inp.shape[1:]))
    classes = int(outp.shape[-1])
    bias = np.zeros((classes,), dtype=np.float32)
    bias[0] = 1.0
    inits = [
        numpy_helper.from_array(np.array([-1, pixels], dtype=np.int64), "flat"),
        numpy_helper.from_array(np.zeros((pixels, classes), dtype=np.float32), "w"),
        numpy_helper.from_array(bias, "b"),
    ]
    nodes = [
        helper.make_node("Reshape", [inp.name, "flat"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], [outp.name]),
    ]
    graph = helper.make_graph(
        nodes,
        "class_zero",
        [helper.make_tensor_value_info(inp.name, TensorProto.FLOAT, ["n", *inp.shape[1:]])],
        [helper.make_tensor_value_info(outp.name, TensorProto.FLOAT, ["n", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    out.mkdir(parents=True, exist_ok=True)
    model_file = out / f"class-zero-{version}.onnx"
    model_file.write_bytes(model.SerializeToString())
    spec = {"quantization": None, "dtype": "float32"}
    manifest = Manifest.model_validate(
        {
            **m.model_dump(),
            "version": version,
            "target": "onnx-fp32",
            "runtime": "onnxruntime",
            "model_file": "model.onnx",
            "sha256": sha256_file(model_file),
            "size_bytes": model_file.stat().st_size,
            "inputs": [{**inp.model_dump(), **spec}],
            "outputs": [{**outp.model_dump(), **spec}],
        }
    )
    return write_bundle(out / f"digits-{version}", model_file, manifest, {}).path
