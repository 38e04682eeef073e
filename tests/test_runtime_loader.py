"""The runtime loader with every runtime this machine has, on real converted bundles."""

from __future__ import annotations

import numpy as np
import pytest

from edgedl import runtime
from edgedl.errors import DataError, RuntimeUnavailableError

TFLITE_TARGETS = ["tflite-int8", "tflite-int8-float-io", "tflite-fp16", "tflite-dynamic"]


def _backend_or_skip(name: str) -> str:
    if name not in runtime.available_backends():
        pytest.skip(
            f"{name} is not importable here"
            + (" (tflite-runtime 2.14 has no NumPy 2 build; LiteRT replaces it)"
               if name == "tflite_runtime" else "")
        )  # fmt: skip
    return name


@pytest.mark.parametrize("backend", list(runtime.TFLITE_BACKENDS))
@pytest.mark.parametrize("target", TFLITE_TARGETS)
def test_each_tflite_backend_gives_the_same_predictions(digits_bundles, digits, backend, target):
    _backend_or_skip(backend)
    test = np.load(digits.test)
    bundle = digits_bundles[target].bundle
    runner = runtime.load(bundle, backend=backend, threads=1)
    assert runner.backend == backend
    reference = runtime.load(bundle, backend="litert", threads=1).predict(test["x"])
    np.testing.assert_allclose(runner.predict(test["x"]), reference, atol=1e-6)


def test_onnxruntime_backend(digits_bundles, digits):
    test = np.load(digits.test)
    runner = runtime.load(digits_bundles["onnx-int8"].bundle)
    assert runner.backend == "onnxruntime"
    assert runner.providers[-1] == "CPUExecutionProvider"
    accuracy = np.mean(runner.predict(test["x"]).argmax(1) == test["y"]) * 100
    assert accuracy == pytest.approx(digits_bundles["onnx-int8"].report["artifact_accuracy"])


def test_unavailable_execution_providers_fall_back_to_cpu(digits_bundles):
    runner = runtime.load(
        digits_bundles["onnx-fp16"].bundle,
        providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    )
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert runner.providers == ["CPUExecutionProvider"]


def test_float_inputs_are_quantized_with_the_manifest_parameters(digits_bundles, digits):
    """run() on floats == run_raw() on inputs quantized by hand with the manifest's scale."""
    bundle = digits_bundles["tflite-int8"].bundle
    runner = runtime.load(bundle)
    x = np.load(digits.test)["x"][:16]
    spec_in, spec_out = bundle.manifest.inputs[0], bundle.manifest.outputs[0]
    q = spec_in.quantization
    assert q is not None
    manual = np.clip(np.round(x / q.scale) + q.zero_point, -128, 127).astype(np.int8)
    raw = runner.run_raw({"pixels": manual})["output_0"]
    assert raw.dtype == np.int8
    qo = spec_out.quantization
    assert qo is not None
    expected = (raw.astype(np.float32) - qo.zero_point) * qo.scale
    np.testing.assert_allclose(runner.run({"pixels": x})["output_0"], expected)
    # Probabilities come back as floats that sum to about one, not as raw int8 codes.
    assert np.allclose(expected.sum(axis=1), 1.0, atol=0.05)


@pytest.mark.parametrize("target", ["tflite-int8", "onnx-int8"])
def test_batches_of_any_size_match_one_at_a_time(digits_bundles, digits, target):
    runner = runtime.load(digits_bundles[target].bundle)
    x = np.load(digits.test)["x"][:37]
    one_by_one = np.concatenate([runner.predict(x[i : i + 1]) for i in range(len(x))])
    for size in (1, 5, 37):
        batched = np.concatenate([runner.predict(x[i : i + size]) for i in range(0, 37, size)])
        np.testing.assert_allclose(batched, one_by_one, atol=1e-5)


def test_wrong_shapes_and_names_are_clear_errors(digits_bundles):
    runner = runtime.load(digits_bundles["tflite-int8"].bundle)
    with pytest.raises(DataError, match=r"expected shape \[\?, 8, 8, 1\], got \[2, 28, 28, 1\]"):
        runner.run({"pixels": np.zeros((2, 28, 28, 1), np.float32)})
    with pytest.raises(DataError, match="unknown input 'image'"):
        runner.run({"image": np.zeros((1, 8, 8, 1), np.float32)})
    with pytest.raises(DataError, match="missing input 'pixels'"):
        runner.run({})


def test_backend_for_the_wrong_runtime_is_refused(digits_bundles):
    with pytest.raises(RuntimeUnavailableError, match="cannot run a litert bundle"):
        runtime.load(digits_bundles["tflite-int8"].bundle, backend="onnxruntime")


def test_a_bundle_for_a_jetson_asks_for_its_gpu_providers_and_falls_back_to_the_cpu(
    digits_bundles, digits, tmp_path
):
    import json
    import shutil

    from edgedl.devices import DEVICES

    bundle = tmp_path / "for-jetson"
    shutil.copytree(digits_bundles["onnx-fp16"].bundle.path, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["device"] = "jetson-orin"
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    runner = runtime.load(bundle, threads=1)
    assert runner.requested_providers == list(DEVICES["jetson-orin"].execution_providers)
    assert "TensorrtExecutionProvider" in runner.requested_providers
    # This host has no GPU: ONNX Runtime runs it on the CPU, with the same results.
    assert runner.providers == ["CPUExecutionProvider"]
    test = np.load(digits.test)
    plain = runtime.load(digits_bundles["onnx-fp16"].bundle, threads=1)
    assert plain.requested_providers == ["CPUExecutionProvider"]
    np.testing.assert_allclose(runner.predict(test["x"]), plain.predict(test["x"]), atol=1e-6)
    # Explicit providers win over the profile's.
    forced = runtime.load(bundle, threads=1, providers=["CPUExecutionProvider"])
    assert forced.requested_providers == ["CPUExecutionProvider"]
