"""``--target auto``: candidates validated and ranked, the fastest within the bound kept,
int8 that is slower than float flagged, and a best bundle written even when nothing passes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.conftest import run_edgedl

from edgedl import runtime
from edgedl.bundle import Bundle
from edgedl.converters import ConvertOptions
from edgedl.converters.auto import convert_auto

pytestmark = pytest.mark.slow  # each case converts a model four times


@pytest.fixture(scope="module")
def outlier_cnn(torch_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained digits CNN with one wide-range channel, as TorchScript.

    The first conv's busiest channel is scaled up 1000x and the next conv's weights for it down
    1000x: the float function is unchanged (ReLU is positively homogeneous), but one int8
    scale per tensor must now span 1000x the range, so the other 15 channels lose their
    resolution — the "layer with a wide activation range" that breaks plain int8.
    """
    import torch

    from edgedl.converters.torch_digits import make_model

    model = make_model()
    model.load_state_dict(torch.load(torch_digits.state_dict, weights_only=True))
    x = torch.from_numpy(np.load(torch_digits.train)["x"])
    with torch.no_grad():
        c = int(torch.relu(model[0](x)).mean(dim=(0, 2, 3)).argmax())  # the busiest channel
        model[0].weight[c] *= 1000.0
        model[0].bias[c] *= 1000.0
        model[2].weight[:, c] /= 1000.0
    path = tmp_path_factory.mktemp("outlier") / "outlier.pt"
    torch.jit.trace(model.eval(), (torch.zeros(1, 1, 8, 8),)).save(str(path))
    return path


@pytest.fixture(scope="module")
def norm_mlp(torch_digits: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A residual MLP of small Linear layers with LayerNorm and GELU between them.

    ONNX Runtime's static QDQ int8 quantizes only the Linear layers, so every block pays
    quantize/dequantize around them and keeps LayerNorm and GELU in float: on a CPU it runs
    several times slower than fp32, the regression the guard exists for. Digits pixels,
    flattened, without labels: judged by agreement with the float model.
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.linear, self.norm, self.act = (
                nn.Linear(width, width),
                nn.LayerNorm(width),
                nn.GELU(),
            )

        def forward(self, x: Any) -> Any:
            return x + self.act(self.norm(self.linear(x)))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), *[Block(32) for _ in range(12)], nn.Linear(32, 10))
    out = tmp_path_factory.mktemp("mlp")
    torch.jit.trace(model.eval(), (torch.zeros(1, 64),)).save(str(out / "mlp.pt"))
    for split in ("train", "test"):
        x = np.load(getattr(torch_digits, split))["x"].reshape(-1, 64)
        np.save(out / f"{split}.npy", x)
    return {"model": out / "mlp.pt", "train": out / "train.npy", "test": out / "test.npy"}


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in report["auto"]["candidates"]}


def test_int8_slower_than_float_is_flagged_and_not_picked(norm_mlp: Any, tmp_path: Path) -> None:
    result = convert_auto(
        norm_mlp["model"],
        ConvertOptions(
            target="auto", calibration=norm_mlp["train"], validation=norm_mlp["test"],
            output=tmp_path / "auto", max_accuracy_drop=5.0,
        ),
    )  # fmt: skip
    auto = result.report["auto"]
    rows = _rows(result.report)
    assert set(rows) == {"onnx-int8", "onnx-int8-u8u8", "onnx-fp16", "onnx-dynamic", "onnx-fp32"}
    assert auto["measure"] == "agreement"  # no labels in .npy data
    int8, fp32 = rows["onnx-int8"], rows["onnx-fp32"]
    assert int8["latency_p50_ms"] > 1.5 * fp32["latency_p50_ms"]
    reason = int8["slower_than_fp32"]
    assert reason is not None and "QuantizeLinear/DequantizeLinear nodes inserted" in reason
    assert "ops left in float" in reason  # GELU's Erf stays float
    assert auto["chosen"] != "onnx-int8"
    chosen = rows[auto["chosen"]]
    assert chosen["within_bound"] and not chosen["slower_than_fp32"]
    # The fastest of the candidates that are within the bound and no regression.
    eligible = [r for r in rows.values() if r["within_bound"] and not r["slower_than_fp32"]]
    assert chosen["latency_p50_ms"] == min(r["latency_p50_ms"] for r in eligible)
    bundle = Bundle.open(tmp_path / "auto")
    assert bundle.manifest.target == auto["chosen"]
    stored = json.loads((bundle.path / "report.json").read_text())
    assert stored["auto"] == auto and stored["passed"] is True


def test_int8_over_the_bound_gives_way_to_a_float_candidate(
    outlier_cnn: Path, torch_digits: Any, tmp_path: Path
) -> None:
    result = convert_auto(
        outlier_cnn,
        ConvertOptions(
            target="auto", calibration=torch_digits.train, validation=torch_digits.test,
            output=tmp_path / "auto", max_accuracy_drop=1.0,
        ),
    )  # fmt: skip
    auto = result.report["auto"]
    rows = _rows(result.report)
    assert auto["measure"] == "accuracy"
    assert rows["onnx-int8"]["drop_pts"] > 5.0  # plain int8 loses the model
    assert not rows["onnx-int8"]["within_bound"]
    # Mixed precision: the two convs around the wide channel, the worst first, kept in float.
    mixed = rows["onnx-int8-mixed"]
    assert mixed["float_layers"] == ["/2/Conv", "/0/Conv"]
    probes = [(p["float_layers"], p["within_bound"]) for p in mixed["search"]["probes"]]
    assert probes == [(1, False), (2, True)]
    assert mixed["within_bound"] and mixed["drop_pts"] <= 1.0
    assert mixed["size_bytes"] < rows["onnx-fp32"]["size_bytes"]  # the Gemms stay int8
    assert auto["chosen"] in ("onnx-int8-mixed", "onnx-fp16", "onnx-dynamic", "onnx-fp32")
    assert rows[auto["chosen"]]["drop_pts"] <= 1.0
    assert result.report["accuracy_drop_pts"] <= 1.0  # the written bundle is that candidate
    # The chosen bundle serves through a real agent exactly as the runtime runs it.
    x = np.load(torch_digits.test)["x"][:16]
    agent = AgentProcess(["--model", str(tmp_path / "auto")], dict(os.environ), tmp_path / "log")
    try:
        agent.wait_ready()
        with agent.client() as client:
            served = client.infer("outlier", x)
    finally:
        agent.stop()
    direct = runtime.load(tmp_path / "auto").run({"input": x})
    assert served.keys() == direct.keys()
    for key, value in direct.items():
        np.testing.assert_array_equal(served[key], value)


def test_a_bound_nothing_meets_writes_the_best_shows_the_table_exits_3(
    outlier_cnn: Path, torch_digits: Any, tmp_path: Path
) -> None:
    out = tmp_path / "auto"
    result = run_edgedl(
        "convert", outlier_cnn, "--target", "auto", "--calibration", torch_digits.train,
        "--validation", torch_digits.test, "--output", out, "--max-accuracy-drop", "-1",
    )  # fmt: skip
    assert result.code == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "no candidate is within --max-accuracy-drop -1" in result.last_error_line
    assert "--target auto: candidates, ranked" in result.stdout
    # The mixed-precision search printed each probe, and nothing in it met the bound.
    assert "mixed precision, probe 1: 1 of 4 layers in float" in result.stderr
    assert "onnx-int8-mixed: bisect search over 4 layers, 3 probes" in result.stdout
    for target in ("onnx-int8", "onnx-fp16", "onnx-dynamic", "onnx-fp32", "onnx-int8-mixed"):
        assert target in result.stdout
    bundle = Bundle.open(out)  # never "no model": the best candidate is there
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False
    drops = {r["target"]: r["drop_pts"] for r in report["auto"]["candidates"]}
    chosen = report["auto"]["chosen"]
    assert drops[chosen] == min(drops.values())
    assert bundle.manifest.target == chosen.removesuffix("-mixed")  # mixed is onnx-int8 inside
