"""Applications on the device reach the agent over a Unix domain socket, beside TCP."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images

from edgedl import runtime
from edgedl.client import AgentClient
from edgedl.errors import ServingError, UsageError


@pytest.fixture
def socket_path(tmp_path: Path) -> Iterator[Path]:
    """A short path for the socket (the kernel allows 107 bytes)."""
    path = Path(f"/tmp/edgedl-test-{os.getpid()}-{tmp_path.name[-20:]}.sock")
    yield path
    path.unlink(missing_ok=True)


@pytest.mark.slow
def test_the_client_infers_over_the_socket_the_same_bits_as_over_tcp_and_sigterm_removes_it(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], socket_path: Path
) -> None:
    bundle = digits_bundle("onnx-fp32")
    agent = agent_process("--model", bundle, "--unix-socket", socket_path)
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o666
    x = digit_images(5)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    with AgentClient(f"unix://{socket_path}") as local, agent.client() as over_tcp:
        assert local.ready()
        assert local.metadata("digits")["inputs"][0]["name"] == "pixels"
        np.testing.assert_array_equal(local.infer("digits", x)["output_0"], expected)
        np.testing.assert_array_equal(over_tcp.infer("digits", x)["output_0"], expected)
        with pytest.raises(ServingError, match="expected shape") as info:
            local.infer("digits", {"pixels": np.zeros((1, 8, 8), np.float32)})
        assert info.value.status == 400
        assert 'edgedl_requests_total{model="digits"' in local.metrics()
    assert f"unix:{socket_path}" in agent.output
    assert agent.terminate() == 0
    assert not socket_path.exists()
    with (
        AgentClient(f"unix://{socket_path}", timeout=2) as gone,
        pytest.raises(ServingError, match="cannot reach the agent"),
    ):
        gone.metadata("digits")


@pytest.mark.slow
def test_a_stale_socket_file_is_replaced_but_a_live_one_or_a_plain_file_is_refused(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], socket_path: Path
) -> None:
    bundle = digits_bundle("onnx-fp32")
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(socket_path))
        listening.listen()
        refused = agent_process("--model", bundle, "--unix-socket", socket_path, wait=False)
        assert refused.proc.wait(60) == 1
    assert f"another process already listens on the Unix socket {socket_path}" in refused.output
    assert socket_path.exists()  # closed without unlinking: what a killed agent leaves
    agent = agent_process("--model", bundle, "--unix-socket", socket_path)
    with AgentClient(f"unix://{socket_path}") as local:
        assert local.live()
    assert agent.terminate() == 0
    socket_path.write_text("not a socket")
    plain = agent_process("--model", bundle, "--unix-socket", socket_path, wait=False)
    assert plain.proc.wait(60) == 1
    assert f"{socket_path} exists and is not a socket" in plain.output
    assert socket_path.read_text() == "not a socket"


def test_a_unix_url_needs_an_absolute_path() -> None:
    with pytest.raises(UsageError, match="absolute path"):
        AgentClient("unix://relative.sock")
