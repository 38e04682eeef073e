"""A :class:`Pipeline` is a streaming object: audio in, events out, statistics kept."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import DataError, EdgeDLError

from .audio import pcm16_to_float
from .config import (
    AsrConfig,
    FeaturesConfig,
    ModelStageConfig,
    PipelineConfig,
    PostprocessConfig,
    WindowConfig,
)
from .features import FeaturesStage
from .stream import Audio, Event, Output, Segment, Stage, Transcript

PCM = bytes | bytearray | memoryview | NDArray[Any]


class Pipeline:
    """Stages run in order on a stream of audio.

    ``feed`` takes the next chunk — s16le bytes, or a NumPy array of int16 or float samples —
    and returns the outputs it completed; ``flush`` ends the stream, returns the outputs still
    held back and starts a new stream (times restart at 0; statistics keep counting). Where
    the stream is cut into chunks never changes the outputs. Calls are serialized, so several
    threads may feed one pipeline (their audio is then one interleaved stream).

    Outputs have a ``kind``: ``detection`` (:class:`Event`, from a postprocess stage),
    ``transcript`` (:class:`Transcript`, from an asr stage) and, when ``emit_segments`` is
    on, ``segment`` (:class:`Segment`, each stretch of speech a VAD kept, given out when it
    closes). Each call gives its outputs in the order of their end times.
    """

    def __init__(
        self, name: str, sample_rate: int, stages: list[Stage], emit_segments: bool = False
    ) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self.stages = stages
        self.emit_segments = emit_segments
        self._lock = threading.Lock()
        self._pos = 0
        self._odd_byte = b""

    def feed(self, pcm: PCM) -> list[Output]:
        """Push the next chunk of audio through the stages; return the outputs it completed."""
        with self._lock:
            samples = self._to_samples(pcm)
            if not samples.size:
                return []
            items: list[Any] = [Audio(self._pos, samples)]
            self._pos += int(samples.shape[0])
            out: list[Output] = []
            for stage in self.stages:
                items = stage.process(items)
                out += self._side(stage)
            return _in_time_order(out + [i for i in items if isinstance(i, Event | Transcript)])

    def flush(self) -> list[Output]:
        """End the stream: let every stage finish what it holds; the next feed starts anew."""
        with self._lock:
            items: list[Any] = []
            out: list[Output] = []
            for stage in self.stages:
                items = stage.process(items) + stage.flush()
                out += self._side(stage)
            self._pos = 0
            self._odd_byte = b""
            return _in_time_order(out + [i for i in items if isinstance(i, Event | Transcript)])

    def run(self, samples: PCM) -> list[Output]:
        """A whole recording at once: ``feed`` then ``flush``."""
        return self.feed(samples) + self.flush()

    def segments(self, samples: PCM) -> list[Segment]:
        """The speech segments of a whole recording (whether or not ``emit_segments`` is on)."""
        emit, self.emit_segments = self.emit_segments, True
        try:
            return [o for o in self.run(samples) if isinstance(o, Segment)]
        finally:
            self.emit_segments = emit

    def _side(self, stage: Stage) -> list[Output]:
        side = stage.side_outputs()
        return side if self.emit_segments else [o for o in side if not isinstance(o, Segment)]

    def stats(self) -> dict[str, dict[str, Any]]:
        """``{stage: {"received", "passed", "unit_in", "unit_out", "latency_ms", ...}}``.

        JSON-ready. VAD stages add ``kept_share`` (passed / received samples) and
        ``segments``.
        """
        return {s.name: {**s.stats.to_dict(), **s.extra_stats()} for s in self.stages}

    @property
    def position_s(self) -> float:
        """Seconds of audio fed into the current stream."""
        return self._pos / self.sample_rate

    def _to_samples(self, pcm: PCM) -> NDArray[np.float32]:
        if isinstance(pcm, bytes | bytearray | memoryview):
            data = self._odd_byte + bytes(pcm)
            even = len(data) - len(data) % 2
            self._odd_byte = data[even:]
            return pcm16_to_float(data[:even])
        arr = np.asarray(pcm)
        if arr.ndim != 1:
            raise DataError(f"audio must be one channel (a 1-D array), got shape {arr.shape}")
        if arr.dtype == np.int16:
            return (arr.astype(np.float32) / 32768.0).astype(np.float32)
        if arr.dtype.kind != "f":
            raise DataError(f"audio must be int16 or float samples, got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise DataError("audio holds NaN or Inf samples")
        return arr.astype(np.float32, copy=False)


def _in_time_order(outputs: list[Output]) -> list[Output]:
    """One call's outputs by their end times; a segment before the transcript of its audio.

    A segment and its transcript end together and are given out in the same call, so a
    recording fed whole and fed in chunks gives its outputs in the same order.
    """
    return sorted(outputs, key=lambda o: o.end)


def build_pipeline(config: PipelineConfig, base_dir: str | Path = ".") -> Pipeline:
    """The pipeline ``config`` describes; relative paths are taken from ``base_dir``.

    Raises a :class:`EdgeDLError` subclass naming the pipeline and stage when a stage cannot
    be built (a bundle that is missing or does not fit the features, an unknown label ...).
    """
    stages: list[Stage] = []
    rate = config.sample_rate
    shape: tuple[int, ...] | None = None  # what one window holds after the stages so far
    labels: list[str] | None = None
    for i, stage_config in enumerate(config.stages):
        name = config.stage_name(i)
        try:
            stage = _build_stage(stage_config, name, rate, Path(base_dir), shape, labels)
        except EdgeDLError as exc:
            raise type(exc)(f"pipeline {config.name!r}, stage {name!r}: {exc}") from exc
        if isinstance(stage_config, WindowConfig):
            shape = (stage.length,)  # type: ignore[attr-defined]
        elif isinstance(stage, FeaturesStage) and shape is not None:
            shape = stage.output_shape(shape[0])
        elif isinstance(stage_config, ModelStageConfig):
            labels = stage.labels  # type: ignore[attr-defined]
        stages.append(stage)
    return Pipeline(config.name, rate, stages, emit_segments=config.emits_segments)


def _build_stage(
    config: Any,
    name: str,
    rate: int,
    base_dir: Path,
    shape: tuple[int, ...] | None,
    labels: list[str] | None,
) -> Stage:
    # Stage modules are imported here so a pipeline without a model never loads a runtime.
    if config.type == "vad":
        from .vad import build_vad

        return build_vad(name, config, rate, str(base_dir))
    if isinstance(config, WindowConfig):
        from .window import WindowStage

        return WindowStage(name, rate, config.length_ms, config.hop_ms, config.pad_end)
    if isinstance(config, FeaturesConfig):
        return FeaturesStage(
            name, rate, config.n_mels, config.n_fft, config.hop, config.fmin, config.fmax
        )
    if isinstance(config, AsrConfig):
        from .asr import AsrStage

        return AsrStage(name, rate, config.max_segment_s, config.lm, config.dictionary)
    if isinstance(config, ModelStageConfig):
        from .model import ModelStage

        model = ModelStage(name, base_dir / config.bundle, config.threads, config.backend)
        if shape is not None:
            model.check_window_shape(shape)
        return model
    assert isinstance(config, PostprocessConfig)
    from edgedl.errors import ConfigError

    from .postprocess import PostprocessStage

    classes = config.labels or labels
    if not classes:
        raise ConfigError("the bundle has no labels: set labels = [...] on this stage")
    return PostprocessStage(
        name, rate, classes, config.thresholds, config.smooth_windows, config.refractory_ms
    )
