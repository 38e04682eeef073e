"""``edgedl loadtest`` against a real ``edgedl agent serve``: counts, overload, the knee."""

from __future__ import annotations

import json

import httpx
import pytest
from tests.agent.serving_helpers import metric
from tests.conftest import run_edgedl


def answered(url: str) -> float:
    return metric(httpx.get(f"{url}/metrics").text, "edgedl_requests_total")


@pytest.mark.slow
def test_every_request_it_counts_the_agent_counts_too(digits, digits_bundle, serve):
    agent = serve(digits_bundle("onnx-fp32"))
    before = answered(agent.url)
    result = run_edgedl("loadtest", agent.url, "--model", "digits", "--concurrency", "1,4",
                        "--requests", "200", "--inputs", digits.test, "--p99-bound", "5000",
                        "--json")  # fmt: skip
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    steps = doc["steps"]
    assert [s["step"] for s in steps] == [1, 4]
    assert all(s["requests"] == 200 and s["ok"] == 200 and not s["errors"] for s in steps)
    # Warm-up requests (3 per connection) plus the measured ones, all answered by the agent.
    assert answered(agent.url) - before == 400 + 3 * (1 + 4)
    for s in steps:
        assert 0 < s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
        assert s["throughput_rps"] == pytest.approx(s["ok"] / s["elapsed_s"], rel=1e-3)
        assert s["client_cpu_us_per_request"] > 0
    assert doc["knee"]["throughput_rps"] == max(s["throughput_rps"] for s in steps)


@pytest.mark.slow
def test_an_overloaded_agent_answers_429_and_loadtest_counts_them(digits_bundle, serve):
    agent = serve(digits_bundle("tflite-int8"), queue_size=1, max_batch_size=1)
    rejected = metric(httpx.get(f"{agent.url}/metrics").text, "edgedl_requests_rejected_total")
    result = run_edgedl("loadtest", agent.url, "--model", "digits", "--concurrency", "32",
                        "--duration", "2", "--binary", "--json", "--p99-bound", "1000")  # fmt: skip
    assert result.code == 0, result.stderr
    (step,) = json.loads(result.stdout)["steps"]
    assert step["errors"].get("429", 0) > 0, step
    assert set(step["errors"]) == {"429"}
    assert step["requests"] == step["ok"] + step["errors"]["429"]
    after = metric(httpx.get(f"{agent.url}/metrics").text, "edgedl_requests_rejected_total")
    # The agent rejected what loadtest counted, plus any warm-up request it turned away.
    assert after - rejected >= step["errors"]["429"]
    # A step with errors is never the knee, however fast it was.
    assert json.loads(result.stdout)["knee"] is None


@pytest.mark.slow
def test_a_fixed_rate_is_held_and_its_plot_lands_in_the_report(
    digits, digits_bundle, serve, tmp_path
):
    agent = serve(digits_bundle("onnx-fp32"))
    result = run_edgedl("loadtest", agent.url, "--model", "digits", "--rate", "50,100",
                        "--duration", "1", "--json", "--p99-bound", "1000")  # fmt: skip
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    for s, rate in zip(doc["steps"], (50, 100), strict=True):
        assert s["mode"] == "rate"
        assert s["requests"] == rate  # one second at the rate
        # Open loop: requests start on the schedule, never ahead of it, whatever the answers.
        assert s["elapsed_s"] >= (rate - 1) / rate
        assert s["throughput_rps"] <= rate * 1.02
    (tmp_path / "load.json").write_text(result.stdout)
    policy = tmp_path / "policy.toml"
    policy.write_text("[load]\nrate = 80\nmax_p99_ms = 1000\n")
    report = run_edgedl("report", digits_bundle("onnx-fp32"), "--validation", digits.test,
                        "--loadtest", tmp_path / "load.json", "--policy", policy,
                        "--robustness-samples", "50", "--output", tmp_path / "r")  # fmt: skip
    assert report.code == 0, report.stderr
    assert "pass load: at" in report.stderr
    html = (tmp_path / "r" / "report.html").read_text()
    assert 'data-key="load.steps.1.throughput_rps"' in html
    # A rate it never reached fails the gate (checked on the report just written).
    from edgedl.converters.readiness import check_policy, load_policy

    policy.write_text("[load]\nrate = 1000000\nmax_p99_ms = 1\n")
    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    gates = check_policy(load_policy(policy), doc)
    assert gates["passed"] is False
    assert "never reached 1e+06 req/s" in gates["results"][0]["detail"]


def test_no_server_and_bad_options_are_one_line(tmp_path):
    from tests.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    result = run_edgedl("loadtest", url, "--model", "m", "--requests", "1")
    assert result.code != 0 and "no answer" in result.last_error_line
    result = run_edgedl("loadtest", "ftp://x", "--model", "m")
    assert result.code == 2 and "http://HOST:PORT" in result.last_error_line
    result = run_edgedl("loadtest", url, "--model", "m", "--concurrency", "0")
    assert result.code == 2 and "positive" in result.last_error_line
    assert "Traceback" not in result.stderr
