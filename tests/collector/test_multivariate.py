"""A change in how features move together: alerted on through pca_error, over MQTT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tests.collector.helpers import (
    SHA,
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)

from edgedl.bundle import Manifest, TensorSpec
from edgedl.collector.service import Collector
from edgedl.profile import Profile


def tabular(rng: np.random.Generator, n: int, shift: float = 0.0) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """Four features; features 0 and 1 correlated 0.6, or ``shift`` less."""
    x = rng.standard_normal((n, 4))
    rho = 0.6 - shift
    x[:, 1] = rho * x[:, 0] + np.sqrt(1 - rho**2) * x[:, 1]
    return {"t": x.astype(np.float32)}, {}


def test_a_correlation_change_raises_a_pca_error_alert_and_no_per_feature_one(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    fleet: str,
    tmp_path: Path,
    start_collector: Callable[..., Collector],
) -> None:
    profile = Profile.from_reference(*tabular(np.random.default_rng(0), 2000))
    manifest = Manifest(
        name="tab",
        version="1",
        target="onnx-fp32",
        runtime="onnxruntime",
        model_file="model.onnx",
        sha256=SHA,
        size_bytes=1000,
        inputs=[TensorSpec(name="t", shape=[-1, 4], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[-1, 1], dtype="float32")],
        profile=profile.to_dict(),
    )
    manifest_file = tmp_path / "manifest.json"
    manifest_file.write_text(manifest.model_dump_json())
    windows = WindowMaker(manifest, fleet, sample=tabular)
    config = collector_config(broker, sqlite_url, fleet, references=[str(manifest_file)])
    collector = start_collector(config)
    for seq in range(8):  # 8 x 100 samples, correlation 0.6 -> 0
        publisher.publish(*windows.payload("table-1", seq, n=100, shift=0.6, seed=seq))

    def drift_alerts() -> list[dict[str, Any]]:
        alerts = get_json(f"{collector.url}/api/v1/alerts?state=open")
        return [a for a in alerts if a["kind"] == "drift" and a["device"] == "table-1"]

    wait_until(
        lambda: any(a["metric"] == "wasserstein:input/t/pca_error" for a in drift_alerts()),
        what="a drift alert on the PCA reconstruction error",
    )
    result = get_json(f"{collector.url}/api/v1/drift?device=table-1")[0]
    assert result["samples"] == 800
    features = [a for a in drift_alerts() if "/feature[" in a["metric"]]
    assert not features, features
    pca = next(s for s in result["statistics"] if s["statistic"] == "input/t/pca_error")
    assert pca["status"] == "alert" and pca["p_values"]["wasserstein"] < 0.01
