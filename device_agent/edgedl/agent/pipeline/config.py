"""Configuration of a pipeline (``[[pipelines]]`` in agent.toml).

Each ``[[pipelines.stages]]`` table is one stage, chosen by its ``type`` (and, for a VAD, its
``engine``); every stage type has its own model with ``extra="forbid"``, so a misspelt or
misplaced option is an error that names the key::

    [[pipelines]]
    name = "kws"
    sample_rate = 16000

    [[pipelines.stages]]
    type = "vad"
    engine = "webrtc"
    aggressiveness = 2

    [[pipelines.stages]]
    type = "window"
    length_ms = 1000
    hop_ms = 100
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

WEBRTC_SAMPLE_RATES = (8000, 16000, 32000, 48000)
SILERO_SAMPLE_RATES = (8000, 16000)


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Name in stats and messages (default: the type).")


class _Vad(_Stage):
    type: Literal["vad"] = "vad"
    pad_ms: float = Field(200, ge=0, description="Audio kept before speech starts.")
    hangover_ms: float = Field(300, ge=0, description="Audio kept after speech stops.")
    min_speech_ms: float = Field(0, ge=0, description="Speech shorter than this is ignored.")
    merge_touching: bool = Field(
        False, description="A segment whose padding touches the last one's hangover continues it."
    )


class EnergyVadConfig(_Vad):
    """Frame energy against an adaptive noise floor (NumPy only)."""

    engine: Literal["energy"] = "energy"
    frame_ms: float = Field(20, gt=0, le=100)
    threshold_db: float = Field(6, ge=0, description="How far above the noise floor is speech.")
    floor_window_s: float = Field(
        1, gt=0, description="The floor is the quietest frame of this many seconds."
    )
    min_floor_db: float = Field(-60, description="Floor for the floor: digital silence is not 0.")


class WebrtcVadConfig(_Vad):
    """The WebRTC VAD (webrtcvad-wheels)."""

    engine: Literal["webrtc"]
    aggressiveness: int = Field(2, ge=0, le=3)
    frame_ms: Literal[10, 20, 30] = 30
    warmup_ms: float = Field(
        0, ge=0, le=10000, description="The stream's first ms are never speech (WebRTC's start-up)."
    )


class OnnxVadConfig(_Vad):
    """An ONNX VAD model with Silero VAD's interface (the bundled silero_vad.onnx by default)."""

    engine: Literal["onnx"]
    model_path: str | None = Field(None, description="Another ONNX VAD file (Silero's interface).")
    threshold: float = Field(0.5, gt=0, lt=1, description="Speech probability that starts speech.")
    neg_threshold: float | None = Field(
        None, gt=0, lt=1, description="Probability below which speech stops (threshold - 0.15)."
    )


def _engine_of(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("engine", "energy"))
    return str(getattr(value, "engine", "energy"))


VadConfig = Annotated[
    Annotated[EnergyVadConfig, Tag("energy")]
    | Annotated[WebrtcVadConfig, Tag("webrtc")]
    | Annotated[OnnxVadConfig, Tag("onnx")],
    Discriminator(
        _engine_of,
        custom_error_type="vad_engine",
        custom_error_message="engine must be one of 'energy', 'webrtc', 'onnx'",
    ),
]


class WindowConfig(_Stage):
    """Cut kept audio into overlapping windows of ``length_ms`` every ``hop_ms``."""

    type: Literal["window"]
    length_ms: float = Field(1000, gt=0)
    hop_ms: float = Field(100, gt=0)
    pad_end: bool = Field(True, description="End each stretch of speech with a zero-padded window.")

    @model_validator(mode="after")
    def _hop_within_length(self) -> WindowConfig:
        if self.hop_ms > self.length_ms:
            raise ValueError("hop_ms must not exceed length_ms (audio would be skipped)")
        return self


class FeaturesConfig(_Stage):
    """Log-mel spectrogram of each window (see :func:`..features.log_mel`)."""

    type: Literal["features"]
    kind: Literal["log-mel"] = "log-mel"
    n_mels: int = Field(40, gt=0, le=256)
    n_fft: int = Field(512, gt=0, description="FFT size and analysis frame, in samples.")
    hop: int = Field(320, gt=0, description="Hop between frames, in samples.")
    fmin: float = Field(20, ge=0)
    fmax: float | None = Field(None, gt=0, description="Default: half the sample rate.")


class ModelStageConfig(_Stage):
    """Run each window through a bundle (float in, float scores out)."""

    type: Literal["model"]
    bundle: str = Field(description="Path of the bundle (relative to the config file).")
    threads: int = Field(1, ge=0)
    backend: str | None = None


class PostprocessConfig(_Stage):
    """Smooth scores over windows, threshold them per class, and emit events."""

    type: Literal["postprocess"]
    smooth_windows: int = Field(3, ge=1, description="Moving average over this many windows.")
    thresholds: dict[str, float] = Field(
        min_length=1, description="Label -> smoothed score that fires an event."
    )
    refractory_ms: float = Field(1000, ge=0, description="Quiet time after an event, per label.")
    labels: list[str] | None = Field(None, description="Class names (default: the bundle's).")

    @model_validator(mode="after")
    def _thresholds_are_scores(self) -> PostprocessConfig:
        for label, value in self.thresholds.items():
            if not 0 < value <= 1:
                raise ValueError(f"thresholds.{label} must be in (0, 1], got {value}")
        return self


class AsrConfig(_Stage):
    """Speech recognition, one call per segment (PocketSphinx and its bundled US English model)."""

    type: Literal["asr"]
    engine: Literal["pocketsphinx"] = "pocketsphinx"
    max_segment_s: float = Field(
        15, gt=0, le=300, description="Longer speech is cut into pieces of at most this length."
    )
    lm: str | None = Field(None, description="An n-gram language model (default: the package's).")
    dictionary: str | None = Field(None, description="A pronunciation dictionary (default: the package's).")  # fmt: skip


def _type_of(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


StageConfig = Annotated[
    Annotated[VadConfig, Tag("vad")]
    | Annotated[WindowConfig, Tag("window")]
    | Annotated[FeaturesConfig, Tag("features")]
    | Annotated[ModelStageConfig, Tag("model")]
    | Annotated[PostprocessConfig, Tag("postprocess")]
    | Annotated[AsrConfig, Tag("asr")],
    Discriminator(
        _type_of,
        custom_error_type="stage_type",
        custom_error_message="type must be one of 'vad', 'window', 'features', 'model', "
        "'postprocess', 'asr'",
    ),
]

# What each stage type consumes and produces, to check the order of stages.
_FLOW: dict[str, tuple[set[str], str]] = {
    "vad": ({"audio"}, "audio"),
    "window": ({"audio"}, "windows"),
    "features": ({"windows"}, "features"),
    "model": ({"windows", "features"}, "scores"),
    "postprocess": ({"scores"}, "events"),
    "asr": ({"audio"}, "transcripts"),
}

ASR_SAMPLE_RATES = (16000,)


class PipelineConfig(BaseModel):
    """One named pipeline: the sample rate it expects and an ordered list of stages."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Used in URLs and --pipeline.")
    sample_rate: int = Field(16000, gt=0)
    stages: list[StageConfig] = Field(min_length=1)
    segments: bool | None = Field(
        None,
        description="Give out the VAD's speech segments (default: when the last stage is a VAD).",
    )

    @model_validator(mode="after")
    def _check_stages(self) -> PipelineConfig:
        flowing = "audio"
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            accepts, produces = _FLOW[stage.type]
            if flowing not in accepts:
                raise ValueError(
                    f"stages[{i}] ({stage.type}) cannot follow a stage that produces {flowing}"
                )
            flowing = produces
            name = self.stage_name(i)
            if name in seen:
                raise ValueError(f"stages[{i}]: two stages are named {name!r}; set name = ...")
            seen.add(name)
            self._check_rate(i, stage)
        return self

    def _check_rate(self, i: int, stage: BaseModel) -> None:
        rate = self.sample_rate
        if isinstance(stage, WebrtcVadConfig) and rate not in WEBRTC_SAMPLE_RATES:
            raise ValueError(f"stages[{i}]: the webrtc VAD needs a sample rate in {WEBRTC_SAMPLE_RATES}, not {rate}")  # fmt: skip
        if isinstance(stage, OnnxVadConfig) and rate not in SILERO_SAMPLE_RATES:
            raise ValueError(f"stages[{i}]: the onnx VAD needs a sample rate in {SILERO_SAMPLE_RATES}, not {rate}")  # fmt: skip
        if isinstance(stage, AsrConfig) and rate not in ASR_SAMPLE_RATES:
            raise ValueError(f"stages[{i}]: the pocketsphinx ASR's model needs a sample rate of 16000, not {rate}")  # fmt: skip
        if isinstance(stage, FeaturesConfig):
            nyquist = rate / 2
            if stage.fmax is not None and stage.fmax > nyquist:
                raise ValueError(f"stages[{i}].fmax {stage.fmax:g} is above half the sample rate ({nyquist:g})")  # fmt: skip
            if stage.fmin >= (stage.fmax or nyquist):
                raise ValueError(f"stages[{i}].fmin must be below fmax")

    @property
    def emits_segments(self) -> bool:
        """Whether the VAD's segments come out: ``segments``, else when a VAD ends the pipeline."""
        if self.segments is not None:
            return self.segments
        return self.stages[-1].type == "vad"

    def stage_name(self, i: int) -> str:
        """The name of stage ``i``: its ``name``, else its type."""
        stage = self.stages[i]
        return stage.name or stage.type
