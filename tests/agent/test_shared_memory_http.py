"""Triton's system shared memory extension over HTTP, one set of regions with gRPC.

A real agent process, ``tritonclient.http`` / ``tritonclient.grpc`` and regions created by
``tritonclient.utils.shared_memory`` (POSIX shared memory under /dev/shm), as a camera process
on the device would use them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import digit_images
from tests.ports import free_port

from edgedl import runtime

triton_http = pytest.importorskip("tritonclient.http")
triton_grpc = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")

ON = {"EDGEDL_AGENT__SERVER__SHARED_MEMORY": "true"}


@pytest.fixture
def regions() -> Iterator[Callable[[str, int], Any]]:
    """A factory of shared memory regions (``/dev/shm/edgedl_test_<pid>_<name>``), destroyed after."""
    made: list[Any] = []

    def make(name: str, size: int) -> Any:
        made.append(
            shm.create_shared_memory_region(name, f"/edgedl_test_{os.getpid()}_{name}", size)
        )
        return made[-1]

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def key(name: str) -> str:
    return f"/edgedl_test_{os.getpid()}_{name}"


@pytest.mark.slow
def test_outputs_are_the_same_bits_over_json_binary_grpc_and_shared_memory_on_both_apis(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], regions: Any
) -> None:
    bundle = digits_bundle("onnx-fp32")
    x = digit_images(5)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    grpc_port = free_port()
    agent = agent_process("--model", bundle, "--grpc-port", str(grpc_port), env=ON)
    http = triton_http.InferenceServerClient(agent.url.removeprefix("http://"))
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    camera, answers = regions("in", x.nbytes), regions("out", expected.nbytes)
    try:
        got: dict[str, np.ndarray] = {}
        for binary in (False, True):
            tensor = triton_http.InferInput("pixels", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = triton_http.InferRequestedOutput("output_0", binary_data=binary)
            result = http.infer("digits", [tensor], outputs=[wanted])
            got["http-binary" if binary else "http-json"] = result.as_numpy("output_0")
        tensor = triton_grpc.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got["grpc"] = grpc.infer("digits", [tensor]).as_numpy("output_0")

        # registered over HTTP, used over HTTP and over gRPC: one set of regions
        shm.set_shared_memory_region(camera, [x])
        http.register_system_shared_memory("camera", key("in"), x.nbytes)
        http.register_system_shared_memory("answers", key("out"), expected.nbytes)
        assert {r["name"] for r in http.get_system_shared_memory_status()} == {"camera", "answers"}
        assert set(grpc.get_system_shared_memory_status(as_json=True)["regions"]) == {
            "camera",
            "answers",
        }
        assert "system_shared_memory" in http.get_server_metadata()["extensions"]
        tensor = triton_http.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_shared_memory("camera", x.nbytes)
        wanted = triton_http.InferRequestedOutput("output_0")
        wanted.set_shared_memory("answers", expected.nbytes)
        result = http.infer("digits", [tensor], outputs=[wanted])
        entry = result.get_output("output_0")
        assert entry["parameters"]["shared_memory_region"] == "answers"
        assert "data" not in entry
        got["http-shm"] = shm.get_contents_as_numpy(answers, np.float32, [5, 10]).copy()
        shm.set_shared_memory_region(answers, [np.zeros_like(expected)])
        tensor = triton_grpc.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_shared_memory("camera", x.nbytes)
        wanted = triton_grpc.InferRequestedOutput("output_0")
        wanted.set_shared_memory("answers", expected.nbytes)
        grpc.infer("digits", [tensor], outputs=[wanted])
        got["grpc-shm"] = shm.get_contents_as_numpy(answers, np.float32, [5, 10]).copy()

        for name, arr in got.items():
            assert arr.dtype == np.float32, name
            assert arr.tobytes() == expected.tobytes(), name
        http.unregister_system_shared_memory()
        assert http.get_system_shared_memory_status() == []
    finally:
        http.close()
        grpc.close()


@pytest.mark.slow
def test_bad_regions_offsets_and_sizes_get_a_400_that_says_what_is_wrong(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], regions: Any
) -> None:
    x = digit_images(2)  # 512 bytes
    agent = agent_process("--model", digits_bundle("onnx-fp32"), env=ON)
    base = f"{agent.url}/v2/systemsharedmemory"
    regions("in", 1024)

    def register(name: str, **doc: Any) -> httpx.Response:
        return httpx.post(f"{base}/region/{name}/register", json=doc)

    def infer(
        region: str, size: int, offset: int = 0, out: dict[str, Any] | None = None
    ) -> httpx.Response:
        params = {"shared_memory_region": region, "shared_memory_byte_size": size}
        if offset:
            params["shared_memory_offset"] = offset
        doc: dict[str, Any] = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "parameters": params}]}  # fmt: skip
        if out is not None:
            doc["outputs"] = [{"name": "output_0", "parameters": out}]
        return httpx.post(f"{agent.url}/v2/models/digits/infer", json=doc)

    def refused(response: httpx.Response, message: str) -> None:
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]

    refused(register("etc", key="/../etc/passwd", byte_size=8), "must name an object in /dev/shm")
    refused(register("nope", key="/edgedl_test_missing", byte_size=8), "cannot open shared memory")
    refused(register("big", key=key("in"), offset=512, byte_size=1024), "holds 1024 bytes")
    refused(register("neg", key=key("in"), offset=-1, byte_size=8), '"offset" must be an integer')
    refused(register("nokey", byte_size=8), 'needs "key"')
    assert register("camera", key=key("in"), offset=0, byte_size=1024).status_code == 200
    refused(register("camera", key=key("in"), byte_size=1024), "already registered")

    refused(infer("lens", x.nbytes), "unknown shared memory region 'lens'")
    refused(infer("camera", x.nbytes, offset=768), "is outside it")
    refused(infer("camera", 100), "needs 512 bytes, shared_memory_byte_size is 100")
    refused(infer("camera", -5), "shared_memory_byte_size and optionally shared_memory_offset")
    small_out = {"shared_memory_region": "camera", "shared_memory_byte_size": 8, "shared_memory_offset": 600}  # fmt: skip
    refused(infer("camera", x.nbytes, out=small_out), "more than the 8")
    ok = infer("camera", x.nbytes)
    assert ok.status_code == 200, ok.text
    refused(httpx.get(f"{base}/region/lens/status"), "unknown shared memory region 'lens'")
    refused(httpx.post(f"{base}/region/lens/unregister"), "unknown shared memory region 'lens'")
    assert httpx.post(f"{base}/region/camera/unregister").status_code == 200
    refused(infer("camera", x.nbytes), "unknown shared memory region 'camera'")
