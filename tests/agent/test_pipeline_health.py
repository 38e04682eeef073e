"""Per-window stage-health counters that the agent puts into telemetry."""

from __future__ import annotations

import numpy as np

from edgedl.agent.pipeline.config import PipelineConfig
from edgedl.agent.pipeline.pipeline import build_pipeline
from edgedl.agent.pipeline.pipeline_set import PipelineSet
from edgedl.agent.telemetry.system import pipeline_figures
from edgedl.stage_health import HEALTH_KEY
from edgedl.telemetry import TelemetryWindow


def test_each_window_carries_the_counters_accrued_since_the_last():
    config = PipelineConfig.model_validate({"name": "voice", "stages": [{"type": "vad"}]})
    pipelines = PipelineSet([build_pipeline(config)])
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(32000) * 1e-3).astype(np.float32)
    loud = quiet.copy()
    loud[8000:16000] += np.sin(np.arange(8000) * 0.2).astype(np.float32) * 0.3
    pipelines.pipelines["voice"].feed(loud)
    first = pipelines.window_figures()["voice"][HEALTH_KEY]
    assert first["audio_s"] == 2.0 and first["segments"] == 1 and 0 < first["kept_s"] < 2.0
    pipelines.pipelines["voice"].feed(quiet)
    second = pipelines.window_figures()["voice"][HEALTH_KEY]
    assert second["audio_s"] == 2.0 and second["segments"] == 0
    assert pipelines.window_figures()["voice"][HEALTH_KEY]["audio_s"] == 0
    # It fits the telemetry contract as the window builder sends it.
    figures = pipeline_figures(pipelines.window_figures())
    window = TelemetryWindow(
        fleet="f", device="d", seq=0, window_start=0, window_end=1, pipelines=figures
    )
    assert window.pipelines["voice"][HEALTH_KEY]["audio_s"] == 0
