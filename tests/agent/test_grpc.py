"""The agent's gRPC Open Inference Protocol, spoken by unmodified clients to a real agent process."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.serving_helpers import (
    binary_body,
    digit_images,
    metric,
    output_of,
    send_and_wait_queued,
)
from tests.ports import free_port

from edgedl import runtime

tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


def grpc_agent(
    start: Callable[..., AgentProcess], bundle: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[AgentProcess, str]:
    """An agent serving ``bundle`` over HTTP and gRPC; returns it and its gRPC address."""
    port = free_port()
    agent = start("--model", bundle, "--grpc-port", str(port), *args, env=env)
    return agent, f"127.0.0.1:{port}"


def pixels(x: np.ndarray[Any, Any], datatype: str = "FP32") -> Any:
    tensor = tritonclient_grpc.InferInput("pixels", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def raw_request(x: np.ndarray[Any, Any], shape: list[int]) -> Any:
    """A ModelInferRequest (tritonclient's message) of FP32 ``x`` as raw contents."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="digits")
    request.inputs.add(name="pixels", datatype="FP32", shape=shape)
    request.raw_input_contents.append(np.asarray(x, "<f4").tobytes())
    return request


def call_with_stub(address: str, request: Any) -> tuple[str, str]:
    """ModelInfer through a plain gRPC channel; ``request`` a message or raw bytes.

    Returns the status code and details of the error it must end with.
    """
    import grpc

    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        payload = request if isinstance(request, bytes) else request.SerializeToString()
        with pytest.raises(grpc.RpcError) as info:
            infer(payload, timeout=30)
    return str(info.value.code()), str(info.value.details())


@pytest.fixture
def grpc_client() -> Iterator[Callable[[str], Any]]:
    """A factory of tritonclient gRPC clients, closed at the end of the test."""
    clients: list[Any] = []

    def make(address: str) -> Any:
        clients.append(tritonclient_grpc.InferenceServerClient(address))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite-int8", "onnx-fp32"])
def test_tritonclient_grpc_gets_the_outputs_of_http_and_of_the_runtime_bit_for_bit(
    digits_bundle: Any,
    agent_process: Callable[..., AgentProcess],
    grpc_client: Callable[[str], Any],
    target: str,
) -> None:
    bundle = digits_bundle(target)
    x = digit_images(6)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    agent, address = grpc_agent(agent_process, bundle)
    client = grpc_client(address)

    result = client.infer("digits", [pixels(x)], request_id="r-7")
    assert result.get_response().id == "r-7"
    assert result.get_response().model_version == "1"
    over_grpc = result.as_numpy("output_0")
    body, headers = binary_body("pixels", x)
    over_http = httpx.post(f"{agent.url}/v2/models/digits/infer", content=body, headers=headers)
    assert over_http.status_code == 200, over_http.text
    assert over_grpc.dtype == np.float32
    np.testing.assert_array_equal(over_grpc, expected)
    np.testing.assert_array_equal(over_grpc, output_of(over_http, "output_0"))
    # the same batchers and metrics as HTTP
    text = httpx.get(f"{agent.url}/metrics").text
    assert metric(text, "edgedl_requests_total", model="digits") == 2


@pytest.mark.slow
def test_typed_contents_from_a_plain_grpc_stub_give_the_same_outputs(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess]
) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    bundle = digits_bundle("onnx-fp32")
    x = digit_images(3)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    _, address = grpc_agent(agent_process, bundle)
    request = service_pb2.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert not response.raw_output_contents  # a typed request gets a typed answer
    out = response.outputs[0]
    assert (out.name, out.datatype, list(out.shape)) == ("output_0", "FP32", [3, 10])
    got = np.array(out.contents.fp32_contents, dtype=np.float32).reshape(out.shape)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_health_and_metadata_rpcs_answer(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], grpc_client: Any
) -> None:
    _, address = grpc_agent(agent_process, digits_bundle("tflite-int8"))
    client = grpc_client(address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", "1")
    server = client.get_server_metadata()
    assert server.name == "edgedl"
    meta = client.get_model_metadata("digits", as_json=True)
    assert meta["name"] == "digits"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "tflite"
    assert meta["inputs"] == [
        {"name": "pixels", "datatype": "FP32", "shape": ["-1", "8", "8", "1"]}
    ]
    assert meta["outputs"][0]["name"] == "output_0"
    with pytest.raises(tritonclient_grpc.InferenceServerException, match="unknown model") as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(tritonclient_grpc.InferenceServerException) as info:
        client.is_model_ready("digits", "7")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(tritonclient_grpc.InferenceServerException) as info:
        client.get_model_config("digits")  # Triton's, not the protocol's
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


@pytest.mark.slow
def test_bad_requests_get_the_matching_status_code_and_a_clear_message(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], grpc_client: Any
) -> None:
    triton = tritonclient_grpc
    # bodies up to 200 kB; the memory budget holds 4 bytes per byte of a 60 kB message
    env = {
        "EDGEDL_AGENT__SERVER__MAX_REQUEST_BYTES": "200000",
        "EDGEDL_AGENT__SERVER__REQUEST_MEMORY_BYTES": "240000",
    }
    _, address = grpc_agent(agent_process, digits_bundle("onnx-fp32"), env=env)
    client = grpc_client(address)
    x = digit_images(2)

    def refused(*args: Any, **kwargs: Any) -> tuple[str, str]:
        with pytest.raises(triton.InferenceServerException) as info:
            client.infer(*args, **kwargs)
        return info.value.status(), info.value.message()

    status, message = refused("digits", [pixels(x.reshape(2, 64))])
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "expected shape [?, 8, 8, 1], got [2, 64]" in message
    status, message = refused("digits", [pixels(x.astype(np.float64), "FP64")])
    assert status == "StatusCode.INVALID_ARGUMENT"
    assert "expected datatype FP32, got 'FP64'" in message
    code, message = call_with_stub(address, raw_request(np.zeros((3, 8, 8, 1)), [2, 8, 8, 1]))
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "shape [2, 8, 8, 1] of FP32 needs 512 bytes, its raw contents hold 768" in message
    typed = raw_request(x, list(x.shape))
    typed.inputs[0].contents.fp32_contents.extend([0.5])
    code, message = call_with_stub(address, typed)
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "use one or the other" in message
    code, message = call_with_stub(address, b"\xff\xff\xff")
    assert code == "StatusCode.INVALID_ARGUMENT"
    assert "not a ModelInferRequest" in message
    status, message = refused("nope", [pixels(x)])
    assert status == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in message
    status, message = refused("digits", [pixels(x)], model_version="7")
    assert status == "StatusCode.NOT_FOUND"
    status, message = refused("digits", [pixels(np.zeros((240, 8, 8, 1), np.float32))])
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert "request memory budget" in message
    status, message = refused("digits", [pixels(np.zeros((1000, 8, 8, 1), np.float32))])
    assert status == "StatusCode.RESOURCE_EXHAUSTED"  # over max_request_bytes: gRPC's own check
    assert "larger than max" in message
    # after all that, the agent still answers
    assert client.infer("digits", [pixels(x)]).as_numpy("output_0").shape == (2, 10)


@pytest.mark.slow
def test_a_full_queue_is_resource_exhausted_at_once_and_the_queued_calls_are_answered(
    digits_bundle: Any,
    agent_process: Callable[..., AgentProcess],
    grpc_client: Any,
    tmp_path: Path,
) -> None:
    triton = tritonclient_grpc
    bundle = digits_bundle("onnx-fp32")
    # A long queue delay holds the first calls in a queue of 3, so it fills deterministically.
    config = tmp_path / "agent.toml"
    config.write_text(
        f"[[models]]\npath = {str(bundle)!r}\nmax_batch_size = 64\n"
        "max_queue_delay_ms = 3000\nqueue_size = 3\n"
    )
    port = free_port()
    agent = agent_process("--config", config, "--grpc-port", str(port))
    client = grpc_client(f"127.0.0.1:{port}")
    x = digit_images(3)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    answers: dict[int, Any] = {}

    def send(i: int) -> None:
        answers[i] = client.infer("digits", [pixels(x[i : i + 1])]).as_numpy("output_0")

    threads = send_and_wait_queued(agent.url, send, 3, within=2.5)
    started = time.monotonic()
    with pytest.raises(triton.InferenceServerException, match="3 requests queued") as info:
        client.infer("digits", [pixels(x[:1])])
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert time.monotonic() - started < 2.0  # refused at once, not after the queue's delay
    for t in threads:
        t.join(60)
    for i in range(3):
        np.testing.assert_array_equal(answers[i], expected[i : i + 1])
    text = httpx.get(f"{agent.url}/metrics").text
    assert metric(text, "edgedl_requests_rejected_total", reason="queue_full") == 1


@pytest.mark.slow
def test_deadlines_then_sigterm_finishes_calls_in_flight_refuses_new_ones_and_exits_0(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], grpc_client: Any
) -> None:
    triton = tritonclient_grpc
    bundle = digits_bundle("tflite-int8")
    # A long queue delay keeps requests queued for seconds.
    agent, address = grpc_agent(
        agent_process, bundle, "--max-batch-size", "64", "--max-queue-delay-ms", "3000"
    )
    client = grpc_client(address)
    x = digit_images(4)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    with pytest.raises(triton.InferenceServerException, match="no answer within 100 ms") as info:
        client.infer("digits", [pixels(x[:1])], timeout=100_000)  # microseconds
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(triton.InferenceServerException) as info:
        client.infer("digits", [pixels(x[:1])], client_timeout=0.2)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    # one answered request empties the queue of the two that gave up (they are not run)
    np.testing.assert_array_equal(
        client.infer("digits", [pixels(x[:1])]).as_numpy("output_0"), expected[:1]
    )

    answers: dict[int, Any] = {}

    def send(i: int) -> None:
        answers[i] = client.infer("digits", [pixels(x[i : i + 1])]).as_numpy("output_0")

    threads = send_and_wait_queued(agent.url, send, 4, within=2.5)
    agent.proc.send_signal(15)
    while client.is_server_ready():
        time.sleep(0.01)
    with pytest.raises(triton.InferenceServerException, match="shutting down") as info:
        client.infer("digits", [pixels(x[:1])])
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    for t in threads:
        t.join(60)
    assert agent.proc.wait(60) == 0
    assert sorted(answers) == [0, 1, 2, 3]
    for i, got in answers.items():
        np.testing.assert_array_equal(got, expected[i : i + 1])


@pytest.mark.slow
def test_a_grpc_port_in_use_stops_the_agent_with_a_clear_error(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = agent_process(
            "--model", digits_bundle("onnx-fp32"), "--grpc-port", str(port), wait=False
        )
        assert agent.proc.wait(60) == 1
    assert f"could not listen for gRPC on 127.0.0.1:{port}" in agent.output


@pytest.mark.slow
def test_tensors_handed_over_in_shared_memory_give_the_same_bits(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], grpc_client: Any
) -> None:
    import tritonclient.utils.shared_memory as shm

    triton = tritonclient_grpc
    bundle = digits_bundle("onnx-fp32")
    x = digit_images(4)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    env = {"EDGEDL_AGENT__SERVER__SHARED_MEMORY": "true"}
    _, address = grpc_agent(agent_process, bundle, env=env)
    client = grpc_client(address)
    tag = f"edgedl_test_{os.getpid()}"
    inputs = shm.create_shared_memory_region("in", f"/{tag}_in", x.nbytes)
    outputs = shm.create_shared_memory_region("out", f"/{tag}_out", expected.nbytes)
    try:
        shm.set_shared_memory_region(inputs, [x])
        client.register_system_shared_memory("camera", f"/{tag}_in", x.nbytes)
        client.register_system_shared_memory("answers", f"/{tag}_out", expected.nbytes)
        status = client.get_system_shared_memory_status(as_json=True)["regions"]
        assert status["camera"]["byte_size"] == str(x.nbytes)
        tensor = triton.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_shared_memory("camera", x.nbytes)
        wanted = triton.InferRequestedOutput("output_0")
        wanted.set_shared_memory("answers", expected.nbytes)
        result = client.infer("digits", [tensor], outputs=[wanted])
        out = result.get_output("output_0")
        assert out.parameters["shared_memory_region"].string_param == "answers"
        got = shm.get_contents_as_numpy(outputs, np.float32, [4, 10])
        np.testing.assert_array_equal(got, expected)
        # a raw input and an output into shared memory, mixed
        result = client.infer("digits", [pixels(x)], outputs=[wanted])
        np.testing.assert_array_equal(
            shm.get_contents_as_numpy(outputs, np.float32, [4, 10]), expected
        )

        too_small = triton.InferRequestedOutput("output_0")
        too_small.set_shared_memory("answers", 8)
        with pytest.raises(triton.InferenceServerException, match="more than the 8") as info:
            client.infer("digits", [tensor], outputs=[too_small])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        client.unregister_system_shared_memory("camera")
        with pytest.raises(
            triton.InferenceServerException, match="unknown shared memory region 'camera'"
        ) as info:
            client.infer("digits", [tensor])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(
            triton.InferenceServerException, match="must name an object in /dev/shm"
        ):
            client.register_system_shared_memory("etc", "/../etc/passwd", 8)
        client.unregister_system_shared_memory()
        assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
    finally:
        shm.destroy_shared_memory_region(inputs)
        shm.destroy_shared_memory_region(outputs)


@pytest.mark.slow
def test_shared_memory_is_refused_unless_configured(
    digits_bundle: Any, agent_process: Callable[..., AgentProcess], grpc_client: Any
) -> None:
    agent, address = grpc_agent(agent_process, digits_bundle("onnx-fp32"))
    client = grpc_client(address)
    with pytest.raises(tritonclient_grpc.InferenceServerException, match="shared memory is off"):
        client.register_system_shared_memory("camera", "/anything", 8)
    # and over HTTP: the routes and a tensor's parameters
    base = f"{agent.url}/v2/systemsharedmemory"
    answer = httpx.post(f"{base}/region/camera/register", json={"key": "/x", "byte_size": 8})
    assert answer.status_code == 400 and "shared memory is off" in answer.json()["error"]
    doc = {"inputs": [{"name": "pixels", "shape": [1, 8, 8, 1], "datatype": "FP32",
                       "parameters": {"shared_memory_region": "camera",
                                      "shared_memory_byte_size": 256}}]}  # fmt: skip
    answer = httpx.post(f"{agent.url}/v2/models/digits/infer", json=doc)
    assert answer.status_code == 400 and "shared memory is off" in answer.json()["error"]
    assert "system_shared_memory" not in httpx.get(f"{agent.url}/v2").json()["extensions"]
