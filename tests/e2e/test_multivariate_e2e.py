"""A change in how features move together, found end to end: convert, agent, Mosquitto, collector.

A tabular ONNX model is converted with correlated calibration data, so its reference profile
carries a PCA of the input. Two agents serve it: one gets data like the calibration data, the
other the same marginals with the correlation gone. Only the second raises a drift alert, on
the PCA reconstruction error the agent bins (``input/t/pca_error``), and no per-feature
statistic of either device alerts: each feature alone looks as it always did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.conftest import run_edgedl
from tests.e2e.conftest import CollectorProcess
from tests.e2e.test_telemetry_e2e import start_agent, wait_until
from tests.mqtt_broker import MosquittoBroker

pytestmark = pytest.mark.slow

FEATURES = 4


def tabular(rng: np.random.Generator, n: int, rho: float) -> np.ndarray[Any, Any]:
    """Four standard normal features; features 0 and 1 correlated ``rho``."""
    x = rng.standard_normal((n, FEATURES))
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
    return x.astype(np.float32)


def linear_model(path: Path) -> Path:
    """An ONNX model ``y = t @ w``: inputs ``t`` [-1, 4], outputs ``y`` [-1, 2]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((FEATURES, 2)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["t", "w"], ["y"])],
        "tabular",
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [None, FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_correlation_change_raises_a_pca_alert_end_to_end(
    agent_process: Callable[..., AgentProcess],
    collector_process: Callable[..., CollectorProcess],
    e2e_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calibration.npz", x=tabular(rng, 2000, rho=0.8))
    result = run_edgedl(
        "convert", linear_model(tmp_path / "tabular.onnx"), "--target", "onnx-fp32",
        "--calibration", tmp_path / "calibration.npz", "--output", tmp_path / "bundle",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert "t" in manifest["profile"]["projections"]  # the PCA travels in the bundle

    bundle = tmp_path / "bundle"
    collector = collector_process("--reference", bundle, "--min-samples", "200")
    same = start_agent(agent_process, bundle, e2e_broker, tmp_path / "same", "tab-same")
    decorrelated = start_agent(agent_process, bundle, e2e_broker, tmp_path / "decor", "tab-decor")
    for agent, rho in ((same, 0.8), (decorrelated, 0.0)):
        x = tabular(np.random.default_rng(7), 800, rho)
        with agent.client() as client:
            for i in range(0, len(x), 50):
                client.infer("tabular", x[i : i + 50])

    def drift_alerts(device: str) -> list[dict[str, Any]]:
        return [
            a
            for a in collector.get("/api/v1/alerts")
            if a["kind"] == "drift" and a["device"] == device
        ]

    wait_until(
        lambda: any("input/t/pca_error" in a["metric"] for a in drift_alerts("tab-decor")),
        90,
        "a drift alert on tab-decor's PCA reconstruction error",
    )

    def judged(device: str) -> bool:
        results = collector.get("/api/v1/drift", device=device)
        return len(results) == 1 and results[0]["samples"] >= 800

    wait_until(lambda: judged("tab-same") and judged("tab-decor"), 90, "both devices judged")
    [result] = collector.get("/api/v1/drift", device="tab-decor")
    features = [s for s in result["statistics"] if "/feature[" in s["statistic"]]
    assert len(features) == FEATURES  # every feature judged ...
    per_feature = [a["metric"] for a in drift_alerts("tab-decor") if "/feature[" in a["metric"]]
    assert per_feature == []  # ... and none alone changed
    assert drift_alerts("tab-same") == []
    assert same.terminate() == 0 and decorrelated.terminate() == 0
