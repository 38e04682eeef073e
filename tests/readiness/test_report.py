"""``edgedl report`` on the digits bundles: the page in Chromium, its figures, the gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import run_edgedl
from tests.readiness_page import assert_page_matches, page_figures, recompute, scores_of

GOOD_POLICY = """
[accuracy]
max_drop_pts = 2.0
max_class_drop_pts = 10.0
min_accuracy = 0.9
[calibration]
max_ece = 0.1
[robustness]
severity = 1
min_accuracy = 0.8
corruptions = ["gaussian_noise", "brightness", "contrast", "jpeg"]
"""

SHOTS = Path(__file__).resolve().parents[2] / "build" / "readiness-screenshots"


def keep_screenshot(shot: Path) -> None:
    """Copy a screenshot under build/ so a person can look at it after the run."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SHOTS / shot.name)


@pytest.fixture(scope="module")
def digits_report(digits, digits_bundle, serve, tmp_path_factory):  # type: ignore[no-untyped-def]
    int8, fp32 = digits_bundle("tflite-int8"), digits_bundle("onnx-fp32")
    agent = serve(int8)
    out = tmp_path_factory.mktemp("report")
    result = run_edgedl("report", int8, "--validation", digits.test, "--reference", fp32,
                        "--agent", agent.url, "--output", out / "digits")  # fmt: skip
    assert result.code == 0, result.stderr
    return out / "digits", int8, fp32, agent


@pytest.mark.slow
def test_the_digits_page_shows_what_the_raw_predictions_give(digits, digits_report, tmp_path):
    folder, int8, fp32, agent = digits_report
    shown, facts = page_figures(folder / "report.html", tmp_path / "digits-report.png")
    keep_screenshot(tmp_path / "digits-report.png")
    assert facts["remote_requests"] == []  # self-contained: opens from disk, nothing fetched
    assert facts["svg"] >= 4  # F1 bars, confusion matrices, reliability, robustness
    test = np.load(digits.test)
    x, y = test["x"].astype(np.float32), test["y"]
    expected = {**recompute(scores_of(int8, x), y, "artifact"),
                **recompute(scores_of(fp32, x), y, "reference")}  # fmt: skip
    assert_page_matches(shown, expected)
    # The page and the JSON are one computation.
    doc = json.loads((folder / "report.json").read_text())
    assert float(shown["comparison.agreement"]) == round(doc["comparison"]["agreement"], 4)
    # The agent answered each broken input: NaN and malformed tensors with a clear 400, and
    # it was still ready afterwards.
    assert shown["robustness.agent.nan.status"] == "400"
    assert shown["robustness.agent.empty.status"] == "400"
    assert shown["robustness.agent.wrong_shape.status"] == "400"
    assert shown["robustness.agent.zeros.status"] == "200"
    assert shown["robustness.agent.alive"] == "200"
    assert agent.proc.poll() is None


@pytest.mark.slow
def test_robustness_falls_with_severity_and_quantization_tracks_the_float_model(digits_report):
    folder = digits_report[0]
    rows = json.loads((folder / "report.json").read_text())["robustness"]["corruptions"]
    by = {(r["corruption"], r["severity"]): r for r in rows}
    for name in ("gaussian_noise", "blur", "occlusion"):
        assert by[(name, 4)]["accuracy"] < by[("clean", 0)]["accuracy"] - 0.05
    assert all(r["agreement"] > 0.9 for r in rows if r["severity"] <= 2)


@pytest.mark.slow
def test_a_policy_passes_the_good_bundle_and_fails_the_wrong_range_one(
    digits, digits_bundle, wrong_range_bundle, tmp_path
):
    policy = tmp_path / "policy.toml"
    policy.write_text(GOOD_POLICY)
    fp32 = digits_bundle("onnx-fp32")
    common = ("--validation", digits.test, "--reference", fp32, "--policy", policy,
              "--robustness-samples", "200")  # fmt: skip
    good = run_edgedl("report", digits_bundle("tflite-int8"), *common, "--output", tmp_path / "g")
    assert good.code == 0, good.stderr
    assert "FAIL" not in good.stderr
    bad = run_edgedl("report", wrong_range_bundle, *common, "--output", tmp_path / "b")
    assert bad.code == 3, bad.stderr
    assert "gates failed" in bad.last_error_line
    for gate in ("accuracy drop", "class accuracy drop", "robustness", "accuracy:"):
        assert f"FAIL {gate}" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    gates = json.loads((tmp_path / "b" / "report.json").read_text())["gates"]
    assert gates["passed"] is False


def test_a_bad_policy_file_is_one_line(digits, digits_bundle, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[accuracy]\nmax_drop = 1\n")
    result = run_edgedl("report", digits_bundle("onnx-fp32"), "--validation", digits.test,
                        "--policy", policy, "--output", tmp_path / "r")  # fmt: skip
    assert result.code != 0
    assert "accuracy.max_drop" in result.last_error_line
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_convert_writes_the_readiness_report_against_its_source(digits, tmp_path):
    result = run_edgedl("convert", digits.model, "--target", "onnx-fp32", "--calibration",
                        digits.train, "--validation", digits.test, "--labels", digits.labels,
                        "--output", tmp_path / "bundle", "--readiness", tmp_path / "ready")  # fmt: skip
    assert result.code == 0, result.stderr
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    doc = json.loads((tmp_path / "ready" / "report.json").read_text())
    assert doc["reference_name"] == "source digits.keras"
    # fp32 ONNX of the same Keras model: the same answers, so the same figures.
    assert doc["comparison"]["agreement"] >= 0.99
    assert abs(doc["comparison"]["accuracy_drop_pts"]) <= 0.5
    conversion = json.loads((tmp_path / "bundle" / "report.json").read_text())
    assert doc["artifact"]["accuracy"] * 100 == pytest.approx(conversion["artifact_accuracy"])
    assert "<svg" in (tmp_path / "ready" / "report.html").read_text()


@pytest.mark.slow
def test_an_agent_that_counts_nonfinite_values_answers_and_counts_the_warning(
    digits, digits_bundle, serve
):
    from edgedl.converters.readiness.robustness import probe_agent

    agent = serve(digits_bundle("tflite-int8"), nonfinite='"count"')
    x = np.load(digits.test)["x"].astype(np.float32)
    rows = {r["input"]: r for r in probe_agent(agent.url, "digits", "pixels", x, samples=4)}
    # Every 8th of 4 x 64 values is NaN (or +Inf): 32 values, answered and counted.
    assert rows["nan"]["status"] == 200 and rows["nan"]["warnings"] == 32
    assert rows["inf"]["status"] == 200 and rows["inf"]["warnings"] == 32
    assert rows["zeros"]["warnings"] == 0
    assert rows["empty"]["status"] == 400 and rows["wrong_shape"]["status"] == 400
    assert rows["agent alive afterwards"]["status"] == 200
