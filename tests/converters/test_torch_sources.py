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
    # The .pt2 was traced at one sample and keeps that batch; the report says so.
    fixed = [w for w in report["warnings"] if "exported with a fixed batch" in w]
    assert bool(fixed) == (form == "exported") == (spec.shape[0] == 1), (fixed, spec.shape)


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


NETS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class DataDependent(Net):
    def forward(self, x):  # Python control flow on a value: torch.export cannot trace it
        y = super().forward(x)
        return y * 2 if y.sum() > 1e9 else y


def make_random():
    return Net()


def make_seeded():
    torch.manual_seed(0)
    return Net()


def make_dd():
    torch.manual_seed(0)
    return DataDependent()
"""


@pytest.fixture
def nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding ``edgedl_test_nets.py`` (tiny modules), the current directory."""
    (tmp_path / "edgedl_test_nets.py").write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_torch_files_are_read_as_what_their_archive_holds(
    torch_digits: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from edgedl.converters import torch_source
    from edgedl.errors import ModelError

    renamed_pt2 = tmp_path / "program.pt"
    shutil.copy(torch_digits.exported, renamed_pt2)
    renamed_ts = tmp_path / "script.pt2"
    shutil.copy(torch_digits.torchscript, renamed_ts)
    capfd.readouterr()
    assert torch_source.load_module(str(renamed_pt2), None).form == "torch.export"
    assert torch_source.load_module(str(renamed_ts), None).form == "torchscript"
    assert capfd.readouterr().err == ""  # no traceback logged by torch.export.load

    for path, what in [(torch_digits.torchscript, "a TorchScript model"),
                       (torch_digits.exported, "a torch.export archive")]:  # fmt: skip
        with pytest.raises(ModelError, match=f"is {what}, not a state dict: give it as MODEL"):
            torch_source.load_module(torch_digits.factory, Path(path))
    assert capfd.readouterr().err == ""  # torch.load's UserWarning is not shown

    import torch

    torch.save([torch.zeros(2)], tmp_path / "tensors.pt")
    with pytest.raises(ModelError, match=r"tensors.pt holds a pickled list \(torch.save\), not a"):
        torch_source.load_module(str(tmp_path / "tensors.pt"), None)


def test_pickled_module_and_state_dict_mixups_are_one_line(torch_digits: Any, nets: Path) -> None:
    import torch

    from edgedl.converters.torch_digits import make_model

    torch.save(make_model(), nets / "whole.pt")  # a pickled nn.Module
    common = ["--target", "onnx-fp32", "--validation", torch_digits.test, "-o", nets / "b"]
    whole = run_edgedl("convert", nets / "whole.pt", *common)
    line = _error_line(whole)
    assert "whole.pt holds a pickled nn.Module (torch.save(model))" in line
    assert "torch.jit.save(torch.jit.script(model))" in line and "--state-dict" in line
    assert len(whole.stderr.strip().splitlines()) == 1
    ts = run_edgedl("convert", torch_digits.factory, "--state-dict", torch_digits.torchscript,
                    *common)  # fmt: skip
    assert "is a TorchScript model, not a state dict" in _error_line(ts)
    assert "UserWarning" not in ts.stderr and len(ts.stderr.strip().splitlines()) == 1


def test_data_the_module_does_not_take_is_a_data_error(torch_digits: Any, tmp_path: Path) -> None:
    x = np.load(torch_digits.train)["x"][:16]
    np.save(tmp_path / "nhwc.npy", np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    wrong = run_edgedl("convert", torch_digits.factory, "--state-dict", torch_digits.state_dict,
                       "--target", "onnx-int8", "--calibration", tmp_path / "nhwc.npy",
                       "-o", tmp_path / "b")  # fmt: skip
    line = _error_line(wrong)
    assert line.startswith("error: calibration data ") and "nhwc.npy: samples of shape" in line
    assert "[8, 8, 1] do not fit the module (" in line and "channels first" in line
    assert len(wrong.stderr.strip().splitlines()) == 1  # no torch log lines
    assert not (tmp_path / "b").exists()


def test_torchscript_to_tflite_is_refused_up_front(torch_digits: Any, tmp_path: Path) -> None:
    common = ["--calibration", torch_digits.train, "--validation", torch_digits.test]
    tflite = run_edgedl("convert", torch_digits.torchscript, "--target", "tflite-fp32", *common,
                        "-o", tmp_path / "a")  # fmt: skip
    assert tflite.code == 2, tflite.stderr
    assert "a TorchScript file converts to ONNX targets only" in tflite.last_error_line
    auto = run_edgedl("convert", torch_digits.torchscript, "--target", "auto", "--device", "rpi5",
                      *common, "-o", tmp_path / "b")  # fmt: skip
    assert auto.code == 2, auto.stderr
    assert (
        auto.stderr.count("converts to ONNX targets only") == 1
        and len(auto.stderr.strip().splitlines()) == 1
    )
    assert "for tflite-* give the module as a torch.export .pt2" in auto.last_error_line


def test_untraceable_module_falls_back_quietly(torch_digits: Any, nets: Path) -> None:
    result = run_edgedl("convert", "edgedl_test_nets:make_dd", "--target", "onnx-fp32",
                        "--validation", torch_digits.test, "-o", nets / "b", cwd=nets)  # fmt: skip
    assert result.code == 0, result.stderr
    assert "def forward" not in result.stderr and "torch/" not in result.stderr
    assert result.stderr.strip() == "", result.stderr
    report = json.loads((nets / "b" / "report.json").read_text())
    assert report["source"]["exporter"] == "torchscript"
    assert any("torch.export could not trace" in w for w in report["warnings"])
    assert not any("\x1b[" in w for w in report["warnings"])  # torch's colours stripped


def test_factory_without_state_dict_warns_only_when_its_weights_are_random(nets: Path) -> None:
    from edgedl.converters import torch_source

    random = torch_source.load_module("edgedl_test_nets:make_random", None)
    (warning,) = random.warnings
    assert "the converted model has random weights" in warning
    assert torch_source.load_module("edgedl_test_nets:make_seeded", None).warnings == []
