"""The digits CNN, converted to every target, checked on its held-out split (real data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgedl import runtime
from edgedl.bundle import Bundle
from edgedl.converters import TARGETS

REPORT_FIELDS = {
    "source_size_bytes",
    "artifact_size_bytes",
    "size_ratio",
    "top1_agreement",
    "reference_accuracy",
    "artifact_accuracy",
    "accuracy_drop_pts",
    "latency_ms",
    "sqnr_db",
    "float_ops",
    "warnings",
}


def _size(bundles, target: str) -> int:
    return int(bundles[target].report["artifact_size_bytes"])


@pytest.mark.parametrize("target", list(TARGETS))
def test_every_target_gives_a_verified_bundle_that_keeps_accuracy(digits_bundles, digits, target):
    result = digits_bundles[target]
    bundle = Bundle.open(result.bundle.path)  # verifies sha256 and size
    report = json.loads((bundle.path / "report.json").read_text())
    assert set(report) >= REPORT_FIELDS
    assert report["latency_ms"]["p50"] > 0
    assert report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]
    assert report["reference_accuracy"] > 95.0  # the Keras model itself is good
    assert report["accuracy_drop_pts"] <= 1.0
    assert report["top1_agreement"] >= 0.98
    # The report's accuracy is what the shipped bundle really does through the runtime loader.
    test = np.load(digits.test)
    predicted = runtime.load(bundle).predict(test["x"]).argmax(axis=1)
    assert np.mean(predicted == test["y"]) * 100 == pytest.approx(report["artifact_accuracy"])
    assert bundle.manifest.labels == [str(i) for i in range(10)]


@pytest.mark.parametrize(
    ("target", "baseline"), [("tflite-int8", "tflite-fp32"), ("onnx-int8", "onnx-fp32")]
)
def test_int8_models_are_at_most_30_percent_of_fp32(digits_bundles, target, baseline):
    assert _size(digits_bundles, target) <= 0.30 * _size(digits_bundles, baseline)


@pytest.mark.parametrize(
    ("target", "baseline"), [("tflite-fp16", "tflite-fp32"), ("onnx-fp16", "onnx-fp32")]
)
def test_fp16_models_are_at_most_55_percent_of_fp32(digits_bundles, target, baseline):
    assert _size(digits_bundles, target) <= 0.55 * _size(digits_bundles, baseline)


def test_int8_tflite_has_integer_io_with_the_scale_and_zero_point_in_the_manifest(digits_bundles):
    manifest = digits_bundles["tflite-int8"].bundle.manifest
    (inp,) = manifest.inputs
    (out,) = manifest.outputs
    assert (inp.name, inp.dtype, inp.shape) == ("pixels", "int8", [-1, 8, 8, 1])
    assert out.dtype == "int8"
    # Inputs are in [0, 1]: int8 covers that range with a scale of about 1/255.
    assert inp.quantization is not None
    assert inp.quantization.scale == pytest.approx(1 / 255, rel=0.05)
    assert inp.quantization.zero_point == -128
    assert digits_bundles["tflite-int8"].report["float_ops"] == []


def test_float_targets_report_their_float_ops(digits_bundles):
    ops = {o["op"] for o in digits_bundles["tflite-fp32"].report["float_ops"]}
    assert {"CONV_2D", "FULLY_CONNECTED"} <= ops
    onnx_ops = {o["op"] for o in digits_bundles["onnx-fp32"].report["float_ops"]}
    assert {"Conv", "MatMul"} <= onnx_ops
    # Static QDQ quantizes every Conv and MatMul of the digits CNN.
    int8_ops = {o["op"] for o in digits_bundles["onnx-int8"].report["float_ops"]}
    assert not int8_ops & {"Conv", "MatMul"}


def test_dynamic_onnx_warns_that_a_cnn_keeps_float_convolutions(digits_bundles):
    warnings = digits_bundles["onnx-dynamic"].report["warnings"]
    assert any("Conv" in w and "onnx-int8" in w for w in warnings)


def test_a_target_whose_answers_depend_on_the_batch_says_so(digits_bundles):
    # onnx-dynamic quantizes activations with one scale per batch: a sample's outputs move
    # with the other samples of its batch, which the agent's batching makes real.
    # Here the outputs are softmax probabilities and it moves them by 1e-5 of their range,
    # under the warning's bound (tests/converters/test_torch_sources.py has logits over it).
    print({t: r.report["batch_dependence"] for t, r in digits_bundles.items()})
    assert digits_bundles["onnx-dynamic"].report["batch_dependence"] > 0
    for target in ("onnx-fp32", "onnx-int8", "tflite-int8", "tflite-fp32", "tflite-dynamic"):
        report = digits_bundles[target].report
        assert report["batch_dependence"] == 0, target
        assert not any("max_batch_size = 1" in w for w in report["warnings"]), target


def test_manifest_carries_a_reference_profile_of_the_validation_data(digits_bundles, digits):
    manifest = digits_bundles["tflite-int8"].bundle.manifest
    profile = manifest.reference_profile()
    assert profile is not None
    n_test = len(np.load(digits.test)["y"])
    assert profile.samples == n_test
    for stat in ("mean", "std", "min", "max", "nonfinite", "length"):
        hist = profile.histograms[f"input/pixels/{stat}"]
        assert hist.count == n_test
    confidence = profile.histograms["output/output_0/top1_confidence"]
    assert confidence.count == n_test and 0.5 < confidence.mean <= 1.0
    counts = profile.class_counts["output/output_0"]
    assert counts.sum() == n_test and len(counts) == 10
    # A balanced test split: every digit is predicted for some samples.
    assert (counts > 20).all()


def test_sqnr_orders_targets_by_precision(digits_bundles):
    sqnr = {t: r.report["sqnr_db"] for t, r in digits_bundles.items()}
    assert sqnr["tflite-fp32"] > sqnr["tflite-fp16"] > sqnr["tflite-int8"] > 20
    assert sqnr["onnx-fp32"] > sqnr["onnx-fp16"] > sqnr["onnx-int8"] > 20
