"""PyTorch to TFLite through litert-torch (and ai-edge-quantizer): the digits CNN trained here
and EfficientNet-Lite0 with its ImageNet weights, each bundle served by a real agent exactly as
the LiteRT interpreter runs the bundle's model file when called directly."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.conftest import run_edgedl

from edgedl.bundle import Bundle

pytestmark = pytest.mark.slow  # trains a CNN, traces modules with torch.export, converts them

EFFL0 = "edgedl.converters.efficientnet_lite0:make_model"


def _litert_direct(path: Path, x: Any) -> dict[str, Any]:
    """The bundle's model file in a bare LiteRT interpreter, one sample at a time: inputs
    quantized and outputs dequantized by hand with the tensors' own scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    bundle = Bundle.open(path)
    runner = Interpreter(model_path=str(bundle.model_path)).get_signature_runner()
    (name, spec), outputs = next(iter(runner.get_input_details().items())), []
    for sample in x:
        feed = sample[None].astype(np.float32)
        if spec["dtype"] != np.float32:
            scale, zero = spec["quantization"]
            feed = np.clip(np.round(feed / scale) + zero, -128, 127).astype(spec["dtype"])
        raw = runner(**{name: feed})
        outputs.append(raw)
    return dequantized(runner, outputs)


def dequantized(runner: Any, outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A signature runner's per-sample ``outputs`` joined, each dequantized by hand with its
    tensor's own scale and zero point when it is not float32."""
    result = {}
    for key, d in runner.get_output_details().items():
        values = np.concatenate([o[key] for o in outputs]).astype(np.float32)
        if d["dtype"] != np.float32:
            scale, zero = d["quantization"]
            values = (values - zero) * np.float32(scale)
        result[key] = values
    return result


def _served_like_litert(bundles: dict[str, Path], x: Any, log: Path) -> None:
    args = [a for path in bundles.values() for a in ("--model", str(path))]
    agent = AgentProcess(args, dict(os.environ), log)
    try:
        agent.wait_ready()
        with agent.client(timeout=120.0) as client:
            for name, path in bundles.items():
                served = client.infer(name, x)
                direct = _litert_direct(path, x)
                assert served.keys() == direct.keys()
                for key, value in direct.items():
                    np.testing.assert_array_equal(served[key], value, err_msg=name)
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def digits_tflite(torch_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The digits CNN (factory + state dict) to tflite-int8, tflite-fp16 and auto for rpi4."""
    from edgedl.converters import ConvertOptions, convert
    from edgedl.converters.auto import convert_auto

    out = tmp_path_factory.mktemp("digits-tflite")
    common = {
        "calibration": torch_digits.train,
        "validation": torch_digits.test,
        "labels": torch_digits.labels,
        "state_dict": torch_digits.state_dict,
    }
    results = {
        f"digits-{t}": convert(
            torch_digits.factory,
            ConvertOptions(target=t, name=f"digits-{t}", output=out / t, **common),
        )
        for t in ("tflite-int8", "tflite-fp16")
    }
    results["digits-auto"] = convert_auto(
        torch_digits.factory,
        ConvertOptions(target="auto", device="rpi4", name="digits-auto", output=out / "auto",
                       max_accuracy_drop=1.0, **common),
    )  # fmt: skip
    return results


def test_digits_go_to_tflite_through_litert_torch(digits_tflite: Any) -> None:
    int8 = digits_tflite["digits-tflite-int8"]
    fp16 = digits_tflite["digits-tflite-fp16"]
    for result in (int8, fp16):
        report = result.report
        assert report["source"]["kind"] == "torch"
        assert report["path"] == "litert-torch + ai-edge-quantizer"
        assert report["runtime"] == "litert"
        assert report["reference_accuracy"] > 95.0
        assert report["accuracy_drop_pts"] <= 1.0
        (spec,) = result.bundle.manifest.inputs
        assert spec.name == "input" and spec.shape[1:] == [1, 8, 8]  # PyTorch's NCHW kept
    # Full integer with integer I/O, as tflite-int8 promises: no op left in float.
    (spec,) = int8.bundle.manifest.inputs
    assert spec.dtype == "int8" and spec.quantization is not None
    assert int8.bundle.manifest.outputs[0].dtype == "int8"
    assert int8.report["float_ops"] == []
    assert int8.report["calibration"]["samples"] > 100
    assert int8.report["calibration"]["bias_correction"]["layers"] == 4  # 2 conv, 2 dense
    assert int8.report["artifact_size_bytes"] < 0.65 * fp16.report["artifact_size_bytes"]


def test_auto_for_a_litert_device_builds_tflite_candidates(digits_tflite: Any) -> None:
    result = digits_tflite["digits-auto"]
    auto = result.report["auto"]
    built = {r["target"] for r in auto["candidates"] if "skipped" not in r}
    assert built == {"tflite-int8", "tflite-fp16", "tflite-dynamic", "tflite-fp32"}
    assert auto["within_bound"] is True
    assert result.bundle.manifest.runtime == "litert"
    assert result.bundle.manifest.target == auto["chosen"]
    assert result.report["path"].startswith("litert-torch")
    # Timed on this machine, not on the Pi: the report says so unless this is an aarch64 CPU.
    told = [w for w in result.report["warnings"] if "latencies were measured on this" in w]
    assert bool(told) == (platform.machine().lower() not in ("aarch64", "arm64")), told
    if told:
        assert "not on a rpi4" in told[0] and "edgedl loadtest" in told[0]


def test_agent_serves_digits_tflite_like_litert(
    digits_tflite: Any, torch_digits: Any, tmp_path: Path
) -> None:
    bundles = {name: r.bundle.path for name, r in digits_tflite.items()}
    x = np.load(torch_digits.test)["x"][:16]
    _served_like_litert(bundles, x, tmp_path / "agent.log")


DATA_DEPENDENT = """
import torch
from torch import nn


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):  # Python control flow on a value: torch.export cannot trace it
        y = self.fc(x.flatten(1))
        return y * 2 if y.sum() > 1e9 else y


def make_dd():
    torch.manual_seed(0)
    return DataDependent()
"""


def test_a_module_litert_torch_cannot_trace_fails_in_one_line(
    torch_digits: Any, tmp_path: Path
) -> None:
    (tmp_path / "edgedl_test_dd.py").write_text(DATA_DEPENDENT)
    result = run_edgedl(
        "convert", "edgedl_test_dd:make_dd", "--target", "tflite-int8",
        "--calibration", torch_digits.train, "-o", tmp_path / "b", cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no FX graph dump
    line = result.last_error_line
    assert "litert-torch could not convert the factory module" in line
    assert "torch.export → litert-torch → TFLite" in line and "onnx-*" in line
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def effl0_tflite(
    photo_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """EfficientNet-Lite0 to tflite-int8 and tflite-fp16, converted once for the module."""
    from edgedl.converters import ConvertOptions, convert

    cal, val = photo_sets
    out = tmp_path_factory.mktemp("effl0-tflite")
    common = {"calibration": cal, "validation": val, "calibration_samples": 32}
    return {
        f"effl0-{t}": convert(
            EFFL0, ConvertOptions(target=t, name=f"effl0-{t}", output=out / t, **common)
        )
        for t in ("tflite-int8", "tflite-fp16")
    }


def test_efficientnet_lite0_goes_to_tflite(effl0_tflite: Any) -> None:
    int8 = effl0_tflite["effl0-tflite-int8"].report
    fp16 = effl0_tflite["effl0-tflite-fp16"].report
    for report in (int8, fp16):
        assert report["path"] == "litert-torch + ai-edge-quantizer"
        assert report["accuracy_drop_pts"] is None  # no labels: agreement and SQNR only
    assert fp16["top1_agreement"] >= 0.9 and fp16["sqnr_db"] > 25.0
    assert int8["sqnr_db"] < fp16["sqnr_db"]  # int8 is the lossy one, and the report shows it
    assert int8["top1_agreement"] >= 0.8  # bias-corrected, with ranges holding every sample
    assert int8["calibration"]["bias_correction"]["layers"] == 50
    assert int8["float_ops"] == []
    assert int8["artifact_size_bytes"] < 0.6 * fp16["artifact_size_bytes"]


def test_agent_serves_efficientnet_lite0_tflite_like_litert(
    effl0_tflite: Any, photo_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    bundles = {name: r.bundle.path for name, r in effl0_tflite.items()}
    _served_like_litert(bundles, np.load(photo_sets[1])[:4], tmp_path / "agent.log")
