"""``edgedl convert`` as a user runs it: real subprocesses, real files, real exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import run_edgedl

pytestmark = pytest.mark.slow  # each case starts a Python process that imports TensorFlow


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _assert_clean_failure(result, out: Path, *words: str) -> None:
    assert result.code != 0
    assert "Traceback" not in result.stderr
    line = result.last_error_line
    assert line.startswith("error:"), result.stderr
    for word in words:
        assert word in line, line
    assert not out.exists(), "a failed conversion left a bundle behind"
    assert _leftovers(out.parent) == []


def test_convert_writes_a_bundle_and_prints_the_report(digits, tmp_path):
    out = tmp_path / "bundle"
    result = run_edgedl(
        "convert", digits.model, "--target", "tflite-int8",
        "--calibration", digits.train, "--validation", digits.test, "--output", out,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert {p.name for p in out.iterdir()} == {"model.tflite", "manifest.json", "report.json"}
    for words in (
        "size ratio",
        "top-1 agreement",
        "accuracy drop",
        "latency p50",
        "bundle written",
    ):
        assert words in result.stdout


def test_convert_json_output_is_the_report(digits, tmp_path):
    out = tmp_path / "bundle"
    result = run_edgedl(
        "convert", digits.model, "-t", "onnx-int8", "--calibration", digits.train,
        "--validation", digits.test, "-o", out, "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds nothing but the JSON
    assert report["bundle"] == str(out)
    assert report == {**json.loads((out / "report.json").read_text()), "bundle": str(out),
                      "tar": None}  # fmt: skip


def test_accuracy_gate_fails_without_a_bundle_but_keeps_the_report(digits, tmp_path):
    # A classic mistake: calibration data preprocessed differently (here scaled to 0-0.05
    # instead of 0-1), so int8 ranges are far too narrow and activations saturate.
    train = np.load(digits.train)
    bad_cal = tmp_path / "badcal.npz"
    np.savez(bad_cal, x=train["x"] * 0.05, y=train["y"])
    out = tmp_path / "bundle"
    result = run_edgedl(
        "convert", digits.model, "-t", "tflite-int8", "--calibration", bad_cal,
        "--validation", digits.test, "-o", out,
    )  # fmt: skip
    assert result.code == 3
    assert "exceeds --max-accuracy-drop" in result.last_error_line
    assert not out.exists()
    report = json.loads((tmp_path / "bundle.report.json").read_text())
    assert report["passed"] is False
    assert report["accuracy_drop_pts"] > 1.0
    # The same conversion with a looser gate passes.
    ok = run_edgedl(
        "convert", digits.model, "-t", "tflite-int8", "--calibration", bad_cal,
        "--validation", digits.test, "-o", out, "--max-accuracy-drop", "100",
    )  # fmt: skip
    assert ok.code == 0 and out.is_dir()


def test_corrupt_model_file(digits, tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(Path(digits.model).read_bytes()[:2000])  # truncated download
    out = tmp_path / "bundle"
    result = run_edgedl("convert", bad, "-t", "tflite-fp32", "-o", out)
    _assert_clean_failure(result, out, "broken.keras")


def test_corrupt_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    out = tmp_path / "bundle"
    _assert_clean_failure(run_edgedl("convert", bad, "-t", "onnx-fp32", "-o", out), out, "ONNX")


def test_wrong_calibration_shape(digits, tmp_path):
    cal = tmp_path / "cal.npy"
    np.save(cal, np.random.default_rng(0).random((200, 28, 28), dtype=np.float32))
    out = tmp_path / "bundle"
    result = run_edgedl("convert", digits.model, "-t", "tflite-int8", "--calibration", cal,
                        "-o", out)  # fmt: skip
    _assert_clean_failure(result, out, "[28, 28]", "[8, 8, 1]")


def test_nan_in_calibration_data_names_the_sample(digits, tmp_path):
    train = np.load(digits.train)
    x = train["x"].copy()
    x[42, 3, 3, 0] = np.nan
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=x, y=train["y"])
    out = tmp_path / "bundle"
    result = run_edgedl("convert", digits.model, "-t", "onnx-int8", "--calibration", cal,
                        "-o", out)  # fmt: skip
    _assert_clean_failure(result, out, "#42", "NaN")


def test_unknown_target_and_device(digits, tmp_path):
    out = tmp_path / "bundle"
    _assert_clean_failure(run_edgedl("convert", digits.model, "-t", "tflite-int4", "-o", out),
                          out, "unknown target", "tflite-int8")  # fmt: skip
    _assert_clean_failure(run_edgedl("convert", digits.model, "-d", "esp32", "-o", out),
                          out, "unknown device", "rpi4")  # fmt: skip


def test_onnx_source_asked_for_tflite(digits_bundles, tmp_path):
    onnx_file = digits_bundles["onnx-fp32"].bundle.model_path
    out = tmp_path / "bundle"
    result = run_edgedl("convert", onnx_file, "-t", "tflite-fp16", "-o", out)
    _assert_clean_failure(result, out, "onnx-*")


def test_missing_files_and_bad_options(digits, tmp_path):
    out = tmp_path / "bundle"
    _assert_clean_failure(run_edgedl("convert", tmp_path / "nope.keras", "-t", "onnx-fp32",
                                     "-o", out), out, "not found")  # fmt: skip
    _assert_clean_failure(run_edgedl("convert", digits.model, "-t", "onnx-int8", "--calibration",
                                     tmp_path / "nope.npz", "-o", out), out, "not found")  # fmt: skip
    _assert_clean_failure(run_edgedl("convert", digits.model, "--frobnicate", "-o", out),
                          out, "--frobnicate")  # fmt: skip
    _assert_clean_failure(run_edgedl("convert", digits.model, "-t", "onnx-int8", "-o", out),
                          out, "--calibration")  # fmt: skip
    _assert_clean_failure(run_edgedl("convert", digits.model, "-t", "onnx-fp32", "--io", "uint8",
                                     "-o", out), out, "--io")  # fmt: skip
    for bound in ("nan", "101", "-inf"):  # refused before anything is converted: exit 2
        result = run_edgedl("convert", digits.model, "-t", "onnx-fp32", "--max-accuracy-drop",
                            bound, "-o", out)  # fmt: skip
        _assert_clean_failure(result, out, "--max-accuracy-drop")
        assert result.code == 2


def test_existing_output_is_not_overwritten_without_force(digits, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_edgedl("convert", digits.model, "-t", "tflite-fp32", "-o", out)
    assert result.code != 0 and "--force" in result.last_error_line
    assert (out / "keep.txt").read_text() == "mine"


def test_reading_a_tflite_artifact_does_not_import_tensorflow(digits_bundles):
    # Every tflite-* conversion describes its artifact; with LiteRT installed that must not
    # cost TensorFlow's import (seconds, and its CUDA probing on stderr).
    model = digits_bundles["tflite-int8"].bundle.model_path
    code = (
        "import sys\n"
        "from edgedl.converters.artifact import describe_tflite\n"
        f"info = describe_tflite(__import__('pathlib').Path({str(model)!r}))\n"
        "assert info.inputs, info\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow')[:3])\n"
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
