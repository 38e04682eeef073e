"""PyTorch sources: the digits CNN trained here, converted, served by a real agent process."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.conftest import run_edgedl
from tests.converters.conftest import TORCH_CASES

from edgedl import runtime
from edgedl.bundle import Bundle

pytestmark = pytest.mark.slow  # trains a CNN and imports PyTorch


@pytest.mark.parametrize(("name", "form", "target"), TORCH_CASES)
def test_each_pytorch_form_converts_and_keeps_accuracy(
    torch_bundles: Any, torch_digits: Any, name: str, form: str, target: str
) -> None:
    result = torch_bundles[name]
    bundle = Bundle.open(result.bundle.path)  # verifies sha256 and size
    report = json.loads((bundle.path / "report.json").read_text())
    assert report["target"] == target
    assert report["source"]["kind"] == "torch"
    assert report["source"]["form"] == {"factory": "factory", "torchscript": "torchscript",
                                        "exported": "torch.export"}[form]  # fmt: skip
    # The path taken is in the report: torch.export where it traces, TorchScript otherwise.
    expected_exporter = "torchscript" if form == "torchscript" else "torch.export (dynamo)"
    assert report["source"]["exporter"] == expected_exporter
    assert report["tools"]["torch"].startswith("2.")
    # The reference is the PyTorch module itself, and it is a good model.
    assert report["reference_accuracy"] == pytest.approx(torch_digits.test_accuracy * 100)
    assert report["reference_accuracy"] > 95.0
    assert report["accuracy_drop_pts"] <= 1.0
    assert report["top1_agreement"] >= 0.98
    # The accuracy in the report is what the bundle does through the runtime loader.
    test = np.load(torch_digits.test)
    predicted = runtime.load(bundle).predict(test["x"]).argmax(axis=1)
    assert np.mean(predicted == test["y"]) * 100 == pytest.approx(report["artifact_accuracy"])
    (spec,) = bundle.manifest.inputs
    assert spec.shape[1:] == [1, 8, 8]  # PyTorch's NCHW layout, taken from the data


def test_int8_is_smaller_than_fp16(torch_bundles: Any) -> None:
    int8 = torch_bundles["digits-int8"].report["artifact_size_bytes"]
    fp16 = torch_bundles["digits-fp16"].report["artifact_size_bytes"]
    assert int8 <= 0.65 * fp16
    # Static QDQ quantizes every Conv and Gemm/MatMul of the CNN.
    float_ops = {o["op"] for o in torch_bundles["digits-int8"].report["float_ops"]}
    assert not float_ops & {"Conv", "Gemm", "MatMul"}


def test_int8_report_ranks_the_layers_by_their_quantization_error(torch_bundles: Any) -> None:
    layers = torch_bundles["digits-int8"].report["calibration"]["layer_errors"]
    assert sorted(r["op"] for r in layers) == ["Conv", "Conv", "Gemm", "Gemm"]
    losses = [r["loss_db"] for r in layers]
    assert losses == sorted(losses, reverse=True)  # the worst first
    assert all(r["sqnr_db"] > 15 for r in layers)  # a well-behaved model quantizes cleanly


def test_agent_serves_the_pytorch_bundles_like_the_runtime(
    torch_bundles: Any, torch_digits: Any, tmp_path: Path
) -> None:
    bundles = {name: r.bundle.path for name, r in torch_bundles.items()}
    args = [a for path in bundles.values() for a in ("--model", str(path))]
    agent = AgentProcess(args, dict(os.environ), tmp_path / "agent.log")
    try:
        agent.wait_ready()
        x = np.load(torch_digits.test)["x"][:16]
        with agent.client() as client:
            for name, path in bundles.items():
                served = client.infer(name, x)
                direct = runtime.load(path).run({"input": x})
                assert served.keys() == direct.keys()
                for key, value in direct.items():
                    np.testing.assert_array_equal(served[key], value)
    finally:
        agent.stop()


def _error_line(result: Any) -> str:
    assert result.code == 1, result.stderr
    assert "Traceback" not in result.stderr
    return result.last_error_line


def test_user_mistakes_are_one_line_each(torch_digits: Any, tmp_path: Path) -> None:
    common = ["--target", "onnx-int8", "--calibration", torch_digits.train, "-o", tmp_path / "b"]
    missing = run_edgedl("convert", "no_such_package.nets:make_model", *common)
    assert "cannot import 'no_such_package.nets'" in _error_line(missing)
    no_factory = run_edgedl("convert", "edgedl.converters.torch_digits:make_net", *common)
    assert "has no callable 'make_net'" in _error_line(no_factory)

    import torch

    wrong = {k: torch.zeros(3) if k == "0.weight" else v for k, v in
             torch.load(torch_digits.state_dict, weights_only=True).items()}  # fmt: skip
    torch.save(wrong, tmp_path / "wrong.pt")
    misfit = run_edgedl("convert", torch_digits.factory, "--state-dict", tmp_path / "wrong.pt",
                        *common)  # fmt: skip
    line = _error_line(misfit)
    assert "wrong.pt does not fit" in line and "0.weight" in line

    (tmp_path / "notes.pt").write_text("not a model")
    not_model = run_edgedl("convert", tmp_path / "notes.pt", *common)
    assert "is not a PyTorch model" in _error_line(not_model)
    weights_only = run_edgedl("convert", torch_digits.state_dict, *common)
    assert "holds only weights (a state dict)" in _error_line(weights_only)
    np.savez(tmp_path / "images.npz", images=np.load(torch_digits.train)["x"][:8])
    misnamed = run_edgedl("convert", torch_digits.factory, "--state-dict", torch_digits.state_dict,
                          "--target", "onnx-fp32", "--calibration", tmp_path / "images.npz",
                          "-o", tmp_path / "b")  # fmt: skip
    line = _error_line(misnamed)
    assert "array 'images'" in line and "forward takes input" in line
    assert zipfile.is_zipfile(torch_digits.state_dict)
    assert not (tmp_path / "b").exists()


def test_dynamic_int8_logits_that_move_with_the_batch_are_warned_about(
    torch_digits: Any, tmp_path: Path
) -> None:
    from edgedl.converters import ConvertOptions, convert

    result = convert(
        torch_digits.factory,
        ConvertOptions(target="onnx-dynamic", state_dict=torch_digits.state_dict,
                       validation=torch_digits.test, output=tmp_path / "dynamic"),
    )  # fmt: skip
    # Activations quantized with one scale per batch: a sample's logits run alone differ from
    # the same sample's in a batch of 64 by more than 1e-4 of their range.
    assert result.report["batch_dependence"] > 1e-4
    (warning,) = [w for w in result.report["warnings"] if "max_batch_size = 1" in w]
    assert "depend on the batch" in warning
