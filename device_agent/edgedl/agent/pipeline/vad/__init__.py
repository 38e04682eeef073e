"""Voice activity detection: keep speech (with some padding), drop the rest.

Three engines decide frame by frame whether there is speech — ``energy`` (NumPy),
``webrtc`` (webrtcvad-wheels) and ``onnx`` (Silero VAD's ONNX model in ONNX Runtime) — and
one :class:`VadStage` turns those decisions into stretches of kept audio.
"""

from __future__ import annotations

from ..config import EnergyVadConfig, OnnxVadConfig, WebrtcVadConfig
from .energy import EnergyEngine
from .stage import VadEngine, VadStage


def build_vad(
    name: str,
    config: EnergyVadConfig | WebrtcVadConfig | OnnxVadConfig,
    sample_rate: int,
    base_dir: str = ".",
) -> VadStage:
    """The VAD stage a config asks for (engines other than energy are imported on demand)."""
    engine: VadEngine
    if isinstance(config, EnergyVadConfig):
        engine = EnergyEngine(
            sample_rate,
            frame_ms=config.frame_ms,
            threshold_db=config.threshold_db,
            floor_window_s=config.floor_window_s,
            min_floor_db=config.min_floor_db,
        )
    elif isinstance(config, WebrtcVadConfig):
        from .webrtc import WebrtcEngine

        engine = WebrtcEngine(
            sample_rate, config.aggressiveness, config.frame_ms, warmup_ms=config.warmup_ms
        )
    else:
        from .onnx import OnnxEngine, resolve_model_path

        engine = OnnxEngine(
            resolve_model_path(config.model_path, base_dir),
            sample_rate,
            threshold=config.threshold,
            neg_threshold=config.neg_threshold,
        )
    return VadStage(
        name,
        engine,
        sample_rate,
        pad_ms=config.pad_ms,
        hangover_ms=config.hangover_ms,
        min_speech_ms=config.min_speech_ms,
        merge_touching=config.merge_touching,
        engine_name=config.engine,
    )


__all__ = ["VadEngine", "VadStage", "build_vad"]
