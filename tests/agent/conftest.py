"""Fixtures that start a real agent: in process (uvicorn on a free port) or as a subprocess.

* ``serve_in_process(config, extra_routes=..., admin_routes=...)``: a context manager that
  starts an :class:`AgentRuntime` and uvicorn in a thread; yields a :class:`RunningAgent`.
* ``agent_process(*args, env=...)`` (fixture, a factory): runs ``edgedl agent serve ARGS``
  as a subprocess, waits until ``/v2/health/ready`` answers 200 and yields an
  :class:`AgentProcess`; whatever is still running at the end of the test is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import EDGEDL
from tests.ports import free_port


@dataclass
class RunningAgent:
    """An agent answering on ``url``; ``runtime`` is set when it runs in this process."""

    url: str
    runtime: Any = None

    def client(self, timeout: float = 30.0) -> Any:
        from edgedl.client import AgentClient

        return AgentClient(self.url, timeout=timeout)


@contextmanager
def serve_in_process(
    config: Any,
    extra_routes: Sequence[Any] = (),
    admin_routes: Sequence[Any] = (),
    http: Any = "h11",
    before_start: Callable[[Any], Any] | None = None,
) -> Iterator[RunningAgent]:
    """Run the agent's runtime and HTTP app in this process on a free port.

    ``http``: uvicorn's HTTP protocol (a name or a protocol class). ``before_start`` is
    called with the runtime before it starts (to attach components, as ``serve`` does).
    """
    import uvicorn

    from edgedl.agent.app import create_app
    from edgedl.agent.service import AgentRuntime

    runtime = AgentRuntime(config)
    if before_start is not None:
        before_start(runtime)
    runtime.start()
    port = free_port()
    app = create_app(runtime, extra_routes=extra_routes, admin_routes=admin_routes)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", http=http
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the in-process agent did not start")
            time.sleep(0.02)
        yield RunningAgent(f"http://127.0.0.1:{port}", runtime)
    finally:
        server.should_exit = True
        thread.join(20)
        runtime.stop(timeout=20)


class AgentProcess:
    """``edgedl agent serve`` running as a subprocess, its output kept in a log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [EDGEDL, "agent", "serve", "--port", str(self.port), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.output}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agent not ready after {timeout} s:\n{self.output}")

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def client(self, timeout: float = 30.0) -> Any:
        from edgedl.client import AgentClient

        return AgentClient(self.url, timeout=timeout)


@pytest.fixture
def agent_process(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """A factory: ``agent_process("--model", bundle, env={...})`` -> a ready AgentProcess."""
    started: list[AgentProcess] = []

    def start(
        *args: str | Path, env: dict[str, str] | None = None, wait: bool = True
    ) -> AgentProcess:
        full_env = {**os.environ, **(env or {})}
        agent = AgentProcess(
            [str(a) for a in args], full_env, tmp_path / f"agent{len(started)}.log"
        )
        started.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    yield start
    for agent in started:
        agent.stop()


def make_onnx_bundle(
    out: Path, name: str, nodes: list[Any], initializers: list[Any], batch: int | str
) -> Path:
    """A real bundle of a small hand-built ONNX graph ``x [batch, 3] -> y [batch, 3]``."""
    from onnx import TensorProto, helper

    from edgedl.bundle import Manifest, TensorSpec, sha256_file, write_bundle

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    graph = helper.make_graph(nodes, name, [x], [y], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model_file = out / f"{name}.onnx"
    model_file.write_bytes(model.SerializeToString())
    dim = batch if isinstance(batch, int) else -1
    manifest = Manifest(
        name=name,
        version="1",
        target="onnx-fp32",
        runtime="onnxruntime",
        model_file="model.onnx",
        sha256=sha256_file(model_file),
        size_bytes=model_file.stat().st_size,
        inputs=[TensorSpec(name="x", shape=[dim, 3], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[dim, 3], dtype="float32")],
    )
    return write_bundle(out / name, model_file, manifest, {}).path


@pytest.fixture(scope="session")
def odd_batch_fails_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that returns its input but raises inside ONNX Runtime for an odd batch size."""
    from onnx import TensorProto, helper

    pairs = helper.make_tensor("pairs", TensorProto.INT64, [2], [2, -1])
    back = helper.make_tensor("back", TensorProto.INT64, [2], [-1, 3])
    nodes = [
        helper.make_node("Reshape", ["x", "pairs"], ["p"]),
        helper.make_node("Reshape", ["p", "back"], ["y"]),
    ]
    return make_onnx_bundle(tmp_path_factory.mktemp("odd"), "odd", nodes, [pairs, back], "n")


@pytest.fixture(scope="session")
def fixed_batch_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model exported with a fixed batch of 1: ``y = 3 * x``."""
    from onnx import TensorProto, helper

    three = helper.make_tensor("three", TensorProto.FLOAT, [1], [3.0])
    nodes = [helper.make_node("Mul", ["x", "three"], ["y"])]
    return make_onnx_bundle(tmp_path_factory.mktemp("fixed"), "triple", nodes, [three], 1)
