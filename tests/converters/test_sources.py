"""Every source kind (Keras .keras and .h5, SavedModel, ONNX) reaches its targets."""

from __future__ import annotations

import numpy as np
import pytest

from edgedl import runtime
from edgedl.converters import ConvertOptions, convert
from edgedl.errors import UsageError


@pytest.fixture(scope="module")
def keras_model(digits):
    from edgedl.converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    return keras.models.load_model(digits.model, compile=False)


def _accuracy(bundle, digits) -> float:
    test = np.load(digits.test)
    return float(np.mean(runtime.load(bundle).predict(test["x"]).argmax(1) == test["y"]) * 100)


def _convert(model, target, digits, out, **kw):
    return convert(
        model,
        ConvertOptions(
            target=target, calibration=digits.train, validation=digits.test, output=out, **kw
        ),
    )


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite-int8", "onnx-int8", "onnx-fp32"])
def test_saved_model_source(keras_model, digits, tmp_path, target):
    saved = tmp_path / "digits_savedmodel"
    keras_model.export(str(saved), format="tf_saved_model", verbose=False)
    result = _convert(saved, target, digits, tmp_path / "bundle")
    assert result.report["source"]["kind"] == "saved_model"
    assert result.report["accuracy_drop_pts"] <= 1.0
    assert _accuracy(result.bundle, digits) == pytest.approx(result.report["artifact_accuracy"])


@pytest.mark.slow
def test_h5_source(keras_model, digits, tmp_path):
    h5 = tmp_path / "digits.h5"
    keras_model.save(h5)
    result = _convert(h5, "tflite-fp32", digits, tmp_path / "bundle")
    assert result.report["source"]["kind"] == "keras"
    assert result.report["accuracy_drop_pts"] == 0.0


@pytest.mark.parametrize("target", ["onnx-int8", "onnx-dynamic", "onnx-fp16", "onnx-fp32"])
def test_onnx_source_goes_to_every_onnx_target(digits_bundles, digits, tmp_path, target):
    onnx_file = digits_bundles["onnx-fp32"].bundle.model_path
    result = _convert(onnx_file, target, digits, tmp_path / "bundle")
    assert result.report["source"]["kind"] == "onnx"
    assert result.report["accuracy_drop_pts"] <= 1.0
    # Tensor names survive the trip through ONNX: the same input name as the Keras model's.
    assert [s.name for s in result.bundle.manifest.inputs] == ["pixels"]


def test_onnx_source_refuses_tflite_targets(digits_bundles, digits, tmp_path):
    onnx_file = digits_bundles["onnx-fp32"].bundle.model_path
    with pytest.raises(UsageError, match="ONNX"):
        _convert(onnx_file, "tflite-int8", digits, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_uint8_io_for_edge_tpu(digits, tmp_path):
    result = _convert(digits.model, "tflite-int8", digits, tmp_path / "b", io="uint8")
    (inp,) = result.bundle.manifest.inputs
    assert inp.dtype == "uint8"
    assert inp.quantization is not None and inp.quantization.zero_point == 0
    assert result.report["accuracy_drop_pts"] <= 1.0


def test_device_profile_picks_target_and_io(digits, tmp_path):
    coral = convert(
        digits.model,
        ConvertOptions(device="coral", calibration=digits.train, output=tmp_path / "coral"),
    )
    assert coral.bundle.manifest.target == "tflite-int8"
    assert coral.bundle.manifest.device == "coral"
    assert coral.bundle.manifest.inputs[0].dtype == "uint8"
    x86 = convert(
        digits.model,
        ConvertOptions(device="x86", calibration=digits.train, output=tmp_path / "x86"),
    )
    assert x86.bundle.manifest.target == "onnx-int8"
    assert x86.bundle.manifest.runtime == "onnxruntime"


def test_tar_bundle_round_trip(digits, tmp_path):
    result = _convert(digits.model, "tflite-fp16", digits, tmp_path / "b", tar=True)
    assert result.tar_path is not None and result.tar_path.is_file()
    assert _accuracy(result.tar_path, digits) == pytest.approx(result.report["artifact_accuracy"])
