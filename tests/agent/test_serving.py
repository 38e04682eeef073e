"""The agent's inference API over real HTTP against real bundles."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tests.agent.conftest import RunningAgent, serve_in_process
from tests.agent.serving_helpers import binary_body, digit_images, json_request, metric, output_of

from edgedl import runtime
from edgedl.agent.config import AgentConfig, ModelConfig, ServerConfig
from edgedl.client import AgentClient
from edgedl.errors import ServingError


def agent_config(*models: ModelConfig, **server: Any) -> AgentConfig:
    return AgentConfig(server=ServerConfig(**server), models=list(models))


@pytest.fixture(scope="module")
def int8_agent(digits_bundle: Any) -> Iterator[RunningAgent]:
    bundle = digits_bundle("tflite-int8")
    model = ModelConfig(path=str(bundle), max_batch_size=16, max_queue_delay_ms=20)
    with serve_in_process(agent_config(model)) as agent:
        yield agent


@pytest.mark.parametrize("target", ["tflite-int8", "onnx-fp32"])
def test_predictions_over_http_equal_running_the_bundle_directly(
    digits_bundle: Any, target: str
) -> None:
    bundle = digits_bundle(target)
    x = digit_images(5)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    with serve_in_process(agent_config(ModelConfig(path=str(bundle)))) as agent:
        as_json = httpx.post(f"{agent.url}/v2/models/digits/infer", json=json_request("pixels", x))
        body, headers = binary_body("pixels", x)
        as_binary = httpx.post(f"{agent.url}/v2/models/digits/infer", content=body, headers=headers)
        with agent.client() as client:
            via_client = client.infer("digits", x)["output_0"]
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["model_name"] == "digits"
    assert as_json.json()["model_version"] == "1"
    np.testing.assert_allclose(output_of(as_json, "output_0"), expected, rtol=0, atol=1e-6)
    assert as_binary.status_code == 200
    assert as_binary.headers["content-type"] == "application/octet-stream"
    np.testing.assert_array_equal(output_of(as_binary, "output_0"), expected)
    np.testing.assert_array_equal(via_client, expected)


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_works_unchanged(
    int8_agent: RunningAgent, digits_bundle: Any, binary: bool
) -> None:
    import tritonclient.http as triton

    x = digit_images(4)
    expected = runtime.load(digits_bundle("tflite-int8")).run({"pixels": x})["output_0"]
    client = triton.InferenceServerClient(int8_agent.url.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
        assert meta["outputs"][0]["name"] == "output_0"
        tensor = triton.InferInput("pixels", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = triton.InferRequestedOutput("output_0", binary_data=binary)
        result = client.infer("digits", [tensor], outputs=[wanted], request_id="r-1")
        np.testing.assert_allclose(result.as_numpy("output_0"), expected, rtol=0, atol=1e-6)
        assert result.get_response()["id"] == "r-1"
        zipped = client.infer("digits", [tensor], request_compression_algorithm="gzip")
        np.testing.assert_allclose(zipped.as_numpy("output_0"), expected, rtol=0, atol=1e-6)
        # Without requested outputs tritonclient asks for every output as binary data.
        default = client.infer("digits", [tensor], model_version="1")
        np.testing.assert_allclose(default.as_numpy("output_0"), expected, rtol=0, atol=1e-6)
        bad = triton.InferInput("pixels", [1, 64], "FP32")
        bad.set_data_from_numpy(x[:1].reshape(1, 64), binary_data=binary)
        with pytest.raises(triton.InferenceServerException, match="expected shape"):
            client.infer("digits", [bad])
    finally:
        client.close()


def test_health_metadata_and_versions(int8_agent: RunningAgent) -> None:
    url = int8_agent.url
    assert httpx.get(f"{url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    server = httpx.get(f"{url}/v2").json()
    assert server["name"] == "edgedl"
    assert "binary_tensor_data" in server["extensions"]
    meta = httpx.get(f"{url}/v2/models/digits/versions/1").json()
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "tflite"
    assert httpx.get(f"{url}/v2/models/digits/versions/1/ready").json()["ready"] is True
    x = digit_images(1)
    ok = httpx.post(f"{url}/v2/models/digits/versions/1/infer", json=json_request("pixels", x))
    assert ok.status_code == 200
    missing = httpx.post(f"{url}/v2/models/digits/versions/7/infer", json=json_request("pixels", x))
    assert missing.status_code == 404
    assert "no version '7'" in missing.json()["error"]
    assert httpx.get(f"{url}/v2/models/nope").status_code == 404


def test_64_concurrent_clients_are_all_answered_in_batches(
    int8_agent: RunningAgent, digits_bundle: Any
) -> None:
    x = digit_images(64)
    expected = runtime.load(digits_bundle("tflite-int8")).run({"pixels": x})["output_0"]
    before = httpx.get(f"{int8_agent.url}/metrics").text
    results: dict[int, np.ndarray] = {}
    errors: list[str] = []
    barrier = threading.Barrier(64)

    def client(i: int) -> None:
        body, headers = binary_body("pixels", x[i : i + 1])
        with httpx.Client(timeout=60) as http:
            barrier.wait()
            response = http.post(
                f"{int8_agent.url}/v2/models/digits/infer", content=body, headers=headers
            )
        if response.status_code != 200:
            errors.append(response.text)
        else:
            results[i] = output_of(response, "output_0")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(results) == list(range(64))
    for i, out in results.items():
        np.testing.assert_allclose(out, expected[i : i + 1], rtol=0, atol=1e-6)
    after = httpx.get(f"{int8_agent.url}/metrics").text
    labels = {"model": "digits", "version": "1"}
    batches = metric(after, "edgedl_batch_size_count", **labels) - metric(
        before, "edgedl_batch_size_count", **labels
    )
    samples = metric(after, "edgedl_batch_size_sum", **labels) - metric(
        before, "edgedl_batch_size_sum", **labels
    )
    assert samples == 64
    assert batches < 64, "no batch held more than one request"
    singles = metric(after, "edgedl_batch_size_bucket", le="1.0", **labels) - metric(
        before, "edgedl_batch_size_bucket", le="1.0", **labels
    )
    assert singles < batches


def test_several_instances_serve_concurrent_requests(digits_bundle: Any) -> None:
    bundle = digits_bundle("tflite-int8")
    model = ModelConfig(path=str(bundle), instances=2, threads=1, max_batch_size=4)
    x = digit_images(24)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    with serve_in_process(agent_config(model)) as agent:
        assert len(agent.runtime.repository.get("digits")._runners) == 2
        outputs: dict[int, np.ndarray] = {}

        def send(i: int) -> None:
            with agent.client() as client:
                outputs[i] = client.infer("digits", x[i : i + 1])["output_0"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert sorted(outputs) == list(range(24))
    for i, out in outputs.items():
        np.testing.assert_allclose(out, expected[i : i + 1], atol=1e-6)


def test_a_full_queue_answers_429_at_once_and_nothing_else_breaks(digits_bundle: Any) -> None:
    # A long queue delay holds the first requests in the queue, so it fills deterministically.
    model = ModelConfig(
        path=str(digits_bundle("tflite-int8")),
        max_batch_size=64,
        max_queue_delay_ms=3000,
        queue_size=4,
    )
    x = digit_images(1)
    with serve_in_process(agent_config(model)) as agent:
        url = f"{agent.url}/v2/models/digits/infer"
        served = agent.runtime.repository.get("digits")
        statuses: list[int] = []

        def send() -> None:
            statuses.append(httpx.post(url, json=json_request("pixels", x), timeout=30).status_code)

        first = [threading.Thread(target=send) for _ in range(4)]
        for t in first:
            t.start()
        deadline = time.monotonic() + 2.5
        while served.batcher.depth < 4:
            assert time.monotonic() < deadline, "the first requests never queued"
            time.sleep(0.01)
        rejected = httpx.post(url, json=json_request("pixels", x), timeout=30)
        for t in first:
            t.join(30)
        assert rejected.status_code == 429
        assert "4 requests queued" in rejected.json()["error"]
        assert rejected.headers["retry-after"] == "1"
        assert statuses == [200, 200, 200, 200]
        again = httpx.post(url, json=json_request("pixels", x), timeout=30)
        assert again.status_code == 200
        text = httpx.get(f"{agent.url}/metrics").text
        assert metric(text, "edgedl_requests_rejected_total", reason="queue_full") == 1
        assert metric(text, "edgedl_requests_total", model="digits") == 6


def test_a_request_past_its_deadline_is_answered_504(digits_bundle: Any) -> None:
    model = ModelConfig(
        path=str(digits_bundle("tflite-int8")), max_batch_size=64, max_queue_delay_ms=3000
    )
    with serve_in_process(agent_config(model)) as agent:
        request = json_request("pixels", digit_images(1))
        request["parameters"] = {"timeout_ms": 100}
        response = httpx.post(f"{agent.url}/v2/models/digits/infer", json=request, timeout=30)
        assert response.status_code == 504
        assert "100 ms" in response.json()["error"]
        text = httpx.get(f"{agent.url}/metrics").text
        assert metric(text, "edgedl_request_errors_total", kind="timeout") == 1


def test_metrics_count_requests_latency_batches_system_and_live_profile(
    digits_bundle: Any,
) -> None:
    model = ModelConfig(path=str(digits_bundle("tflite-int8")), latency_threshold_ms=0.001)
    with serve_in_process(agent_config(model, profile_max_cpu=1.0)) as agent:
        x = digit_images(10)
        with agent.client() as client:
            for i in range(10):
                client.infer("digits", x[i : i + 1])
            with pytest.raises(ServingError):
                client.infer("digits", np.zeros((1, 3), np.float32))
        agent.runtime.metrics.profiles.flush()
        response = httpx.get(f"{agent.url}/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        labels = {"model": "digits", "version": "1"}
        assert metric(text, "edgedl_requests_total", **labels) == 11
        assert metric(text, "edgedl_request_errors_total", kind="bad_input", **labels) == 1
        assert metric(text, "edgedl_inferences_total", **labels) == 10
        assert metric(text, "edgedl_request_latency_seconds_count", **labels) == 11
        assert metric(text, "edgedl_latency_threshold_violations_total", **labels) == 11
        for q in ("0.5", "0.95", "0.99"):
            assert metric(text, "edgedl_request_latency_recent_seconds", quantile=q, **labels) > 0
        assert metric(text, "edgedl_batch_size_count", **labels) == 10
        assert metric(text, "edgedl_queue_depth", model="digits") == 0
        assert metric(text, "edgedl_process_memory_rss_bytes") > 10_000_000
        assert "edgedl_process_cpu_percent" in text
        assert metric(text, "edgedl_system_memory_used_percent") > 0
        # The live profile bins what the model saw on the bundle's reference edges.
        assert metric(text, "edgedl_profile_samples_total", **labels) == 10
        assert metric(text, "edgedl_predicted_class_total", **labels) == 10
        predicted = runtime.load(digits_bundle("tflite-int8")).predict(x).argmax(axis=1)
        for label in set(predicted.tolist()):
            count = int((predicted == label).sum())
            assert metric(text, "edgedl_predicted_class_total", label=str(label), **labels) == count
        profile = agent.runtime.metrics.profile("digits", "1")
        assert profile is not None
        assert profile.samples == 10
        reference = agent.runtime.repository.get("digits").reference
        assert set(profile.histograms) == set(reference.histograms)
        mean = profile.histograms["input/pixels/mean"]
        assert mean.count == 10
        np.testing.assert_array_equal(mean.edges, reference.histograms["input/pixels/mean"].edges)


def test_the_live_profile_keeps_to_its_cpu_budget_by_sampling(digits_bundle: Any) -> None:
    model = ModelConfig(path=str(digits_bundle("tflite-int8")))
    with serve_in_process(agent_config(model, profile_max_cpu=0.0001)) as agent:
        x = digit_images(20)
        with agent.client() as client:
            for i in range(20):
                client.infer("digits", x[i : i + 1])
        agent.runtime.metrics.profiles.flush()
        text = httpx.get(f"{agent.url}/metrics").text
    binned = metric(text, "edgedl_profile_samples_total", model="digits")
    skipped = metric(text, "edgedl_profile_skipped_batches_total", reason="cpu_budget")
    assert 1 <= binned < 20
    assert binned + skipped == 20


def test_with_telemetry_on_each_batch_is_profiled_once_for_metrics_and_windows(
    digits_bundle: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgedl.agent.telemetry.window as window_module
    import edgedl.profile as profile_module
    from edgedl.agent.telemetry.config import TelemetryConfig
    from edgedl.agent.telemetry.service import TelemetryService, attach

    bundle = digits_bundle("tflite-int8")  # built (and profiled) before the count starts
    profiled: list[int] = []  # samples per computation of per-sample statistics
    compute = profile_module.batch_statistics

    def counted(inputs: Any, outputs: Any, projections: Any = None) -> Any:
        profiled.append(int(next(iter(inputs.values())).shape[0]))
        return compute(inputs, outputs, projections)

    monkeypatch.setattr(profile_module, "batch_statistics", counted)
    monkeypatch.setattr(window_module, "batch_statistics", counted)
    # No broker answers on port 1: windows wait in the spool, serving and profiling go on.
    telemetry = TelemetryConfig(
        mqtt="mqtt://127.0.0.1:1", spool_path=tmp_path / "spool.db", device="pi-1"
    )
    config = AgentConfig(
        server=ServerConfig(profile_max_cpu=0.0001),  # would skip nearly every batch alone
        models=[ModelConfig(path=str(bundle))],
        telemetry=telemetry,
    )
    services: list[TelemetryService | None] = []
    x = digit_images(30)
    with serve_in_process(config, before_start=lambda rt: services.append(attach(rt))) as agent:
        with agent.client() as client:
            for i in range(0, 30, 3):
                client.infer("digits", x[i : i + 3])
        agent.runtime.metrics.profiles.flush()
        text = httpx.get(f"{agent.url}/metrics").text
        live = agent.runtime.metrics.profile("digits", "1")
        reference = agent.runtime.repository.get("digits").reference
        service = services[0]
        assert service is not None
        window = service.builder.cut()
    assert sum(profiled) == 30  # once per sample, not once for /metrics and once for the window
    assert metric(text, "edgedl_profile_samples_total", model="digits", version="1") == 30
    assert metric(text, "edgedl_profile_skipped_batches_total", reason="cpu_budget") == 0
    # What /metrics counted is what the bundle's reference profile makes of the same inputs.
    assert reference is not None and live is not None
    expected = reference.empty_like()
    expected.observe({"pixels": x}, {"output_0": runtime.load(bundle).predict(x)})
    assert live.samples == expected.samples == 30
    for key, hist in expected.histograms.items():
        np.testing.assert_array_equal(live.histograms[key].counts, hist.counts, err_msg=key)
    # ...and the window that telemetry cut profiled the same 30 samples.
    (model,) = window.models
    assert model.profile is not None and model.profile.samples == 30


def test_a_model_with_a_fixed_batch_of_one_still_serves_concurrent_requests(
    fixed_batch_bundle: Path,
) -> None:
    model = ModelConfig(path=str(fixed_batch_bundle), max_batch_size=16, max_queue_delay_ms=20)
    with serve_in_process(agent_config(model)) as agent:
        outputs: dict[int, np.ndarray] = {}

        def send(i: int) -> None:
            with agent.client() as client:
                outputs[i] = client.infer("triple", np.full((1, 3), i, np.float32))["y"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with agent.client() as client:
            # A request of several samples is run one sample at a time.
            several = client.infer("triple", np.arange(6, dtype=np.float32).reshape(2, 3))["y"]
    assert sorted(outputs) == list(range(8))
    for i, out in outputs.items():
        np.testing.assert_array_equal(out, np.full((1, 3), 3.0 * i))
    np.testing.assert_array_equal(several, 3 * np.arange(6, dtype=np.float32).reshape(2, 3))


def test_a_model_that_raises_fails_that_request_with_500_and_the_agent_goes_on(
    odd_batch_fails_bundle: Path,
) -> None:
    model = ModelConfig(path=str(odd_batch_fails_bundle), max_batch_size=1)
    with serve_in_process(agent_config(model)) as agent:
        url = f"{agent.url}/v2/models/odd/infer"
        failed = httpx.post(url, json=json_request("x", np.ones((1, 3), np.float32)))
        assert failed.status_code == 500
        assert "model 'odd' version 1 failed" in failed.json()["error"]
        works = httpx.post(url, json=json_request("x", np.ones((2, 3), np.float32)))
        assert works.status_code == 200
        np.testing.assert_array_equal(output_of(works, "y"), np.ones((2, 3)))
        assert httpx.get(f"{agent.url}/v2/health/ready").status_code == 200
        text = httpx.get(f"{agent.url}/metrics").text
        assert metric(text, "edgedl_request_errors_total", kind="inference") == 1


def test_admin_routes_need_the_token(digits_bundle: Any) -> None:
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def ping(request: Any) -> JSONResponse:
        return JSONResponse({"pong": True})

    admin = [Route("/ping", ping)]
    config = agent_config(admin_token="s3cret")
    with serve_in_process(config, admin_routes=admin) as agent:
        url = f"{agent.url}/v2/admin/ping"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = httpx.get(url, headers={"Authorization": "Bearer s3cret"})
        assert ok.json() == {"pong": True}
    with serve_in_process(agent_config(), admin_routes=admin) as agent:
        refused = httpx.get(f"{agent.url}/v2/admin/ping", headers={"Authorization": "Bearer x"})
        assert refused.status_code == 403
        assert "admin_token" in refused.json()["error"]


def test_the_python_client_reports_the_agents_errors(int8_agent: RunningAgent) -> None:
    with int8_agent.client() as client:
        assert client.live() and client.ready()
        assert client.metadata("digits")["inputs"][0]["name"] == "pixels"
        assert "edgedl_requests_total" in client.metrics()
        with pytest.raises(ServingError, match="unknown model 'nope'") as info:
            client.infer("nope", digit_images(1))
        assert info.value.status == 404
        with pytest.raises(ServingError, match="expected shape") as info:
            client.infer("digits", {"pixels": np.zeros((1, 8, 8), np.float32)})
        assert info.value.status == 400
    with (
        AgentClient("http://127.0.0.1:9", timeout=2) as dead,
        pytest.raises(ServingError, match="cannot reach the agent") as info,
    ):
        dead.metadata("digits")
    assert info.value.status == 0
