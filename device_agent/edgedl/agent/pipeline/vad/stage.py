"""The VAD stage: frame decisions from an engine become stretches of kept audio."""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Protocol

import numpy as np

from ..stream import Audio, Samples, Segment, Stage


class VadEngine(Protocol):
    """Decides, one fixed-size frame at a time, whether there is speech."""

    frame_size: int

    def is_speech(self, frame: Samples) -> bool:
        """True when ``frame`` (``frame_size`` float samples) holds speech."""

    def reset(self) -> None:
        """Forget the stream so far (a new stream starts)."""


def probability_of(engine: VadEngine) -> float | None:
    """The speech probability of the engine's last frame, for engines that have one."""
    value = getattr(engine, "last_probability", None)
    return None if value is None else float(value)


class VadStage(Stage):
    """Keep speech, drop the rest, and report each stretch of speech as a :class:`Segment`.

    Frames are cut at fixed positions from the start of the stream, so where the input was
    split into chunks never matters. A stretch of speech opens after ``min_speech_ms`` of
    speech frames and takes ``pad_ms`` of the audio before it along; it closes after
    ``hangover_ms`` without speech. The last piece of a stretch is followed by an empty
    ``Audio`` with ``ends_segment`` set, so later stages can finish what they hold at once.

    When a pause is just longer than the hangover, the next stretch's padding starts where
    the last one ended: two segments that touch. With ``merge_touching`` the stage waits up
    to ``pad_ms`` (plus ``min_speech_ms``) after the hangover before it closes a stretch, and
    speech that opens within that time continues the same segment (the pause is kept); the
    price is that the end of every stretch reaches later stages that much later.
    """

    def __init__(
        self,
        name: str,
        engine: VadEngine,
        sample_rate: int,
        pad_ms: float = 200,
        hangover_ms: float = 300,
        min_speech_ms: float = 0,
        merge_touching: bool = False,
        engine_name: str = "",
    ) -> None:
        super().__init__(name)
        self.engine = engine
        self.engine_name = engine_name or type(engine).__name__
        self.sample_rate = sample_rate
        self.merge_touching = merge_touching
        frame = engine.frame_size

        def to_frames(ms: float) -> int:
            return math.ceil(ms / 1000 * sample_rate / frame)

        self._min_frames = max(1, to_frames(min_speech_ms))
        self._hang_frames = to_frames(hangover_ms)
        self._history: deque[tuple[int, Samples, float | None]] = deque(
            maxlen=to_frames(pad_ms) + self._min_frames
        )
        self.segments = 0
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self._pos = 0  # stream index of the first pending sample
        self._history.clear()
        self._in_speech = False
        self._closing = False  # hangover over, waiting to see whether speech resumes (merge)
        self._run = 0  # consecutive speech frames while waiting to open
        self._quiet = 0  # consecutive non-speech frames while open
        self._seg_start = 0
        self._seg_end = 0  # stream index just past the last kept sample
        self._probs: list[float] = []

    def _process(self, items: list[Any]) -> list[Any]:
        out: list[Audio] = []
        frame = self.engine.frame_size
        for item in items:
            self._pending = np.concatenate([self._pending, item.samples])
            n_full = self._pending.shape[0] // frame
            for k in range(n_full):
                self._on_frame(
                    self._pos + k * frame, self._pending[k * frame : (k + 1) * frame], out
                )
            self._pending = self._pending[n_full * frame :]
            self._pos += n_full * frame
        return _merge(out)

    def _on_frame(self, start: int, frame: Samples, out: list[Audio]) -> None:
        speech = self.engine.is_speech(frame)
        prob = probability_of(self.engine)
        if self._in_speech:
            self._quiet = 0 if speech else self._quiet + 1
            if self._quiet <= self._hang_frames:
                self._keep(start, frame, prob, out)
                return
            self._in_speech = False
            self._run = 0
            if self.merge_touching:
                self._closing = True
            else:
                self._close(out)
        self._run = self._run + 1 if speech else 0
        if self._closing and len(self._history) == self._history.maxlen:
            self._close(out)  # the oldest frame, right after the segment, is about to go
        self._history.append((start, frame, prob))
        if self._run >= self._min_frames:
            if not self._closing:
                self._seg_start = self._history[0][0]
                self._probs = []
                self.segments += 1
            self._closing = False
            for s, f, p in self._history:
                self._keep(s, f, p, out)
            self._history.clear()
            self._in_speech = True
            self._quiet = 0

    def _keep(self, start: int, frame: Samples, prob: float | None, out: list[Audio]) -> None:
        out.append(Audio(start, frame))
        self._seg_end = start + int(frame.shape[0])
        if prob is not None:
            self._probs.append(prob)

    def _close(self, out: list[Audio]) -> None:
        """End the open segment at ``_seg_end``: the end marker, and the segment itself."""
        out.append(Audio(self._seg_end, np.zeros(0, np.float32), ends_segment=True))
        probs = self._probs
        self._side.append(
            Segment(
                self._seg_start / self.sample_rate,
                self._seg_end / self.sample_rate,
                self.engine_name,
                self.name,
                float(np.mean(probs)) if probs else None,
                float(np.max(probs)) if probs else None,
            )
        )
        self._closing = False
        self._probs = []

    def _flush(self) -> list[Any]:
        out: list[Audio] = []
        if self._in_speech:
            if self._pending.size:
                out.append(Audio(self._pos, self._pending.copy()))
                self._seg_end = self._pos + int(self._pending.shape[0])
            self._close(out)
        elif self._closing:
            self._close(out)
        self._reset_stream()
        self.engine.reset()
        return _merge(out)

    def extra_stats(self) -> dict[str, Any]:
        """The share of audio kept and the number of speech stretches found."""
        received = self.stats.received
        return {
            "kept_share": round(self.stats.passed / received, 4) if received else None,
            "segments": self.segments,
        }


def _merge(pieces: list[Audio]) -> list[Audio]:
    """Join pieces that follow each other without a gap into one."""
    merged: list[Audio] = []
    run: list[Audio] = []
    for piece in pieces:
        if run and (piece.start != run[-1].end or run[-1].ends_segment):
            merged.append(_join(run))
            run = []
        run.append(piece)
        if piece.ends_segment:
            merged.append(_join(run))
            run = []
    if run:
        merged.append(_join(run))
    return merged


def _join(run: list[Audio]) -> Audio:
    if len(run) == 1:
        return run[0]
    samples = np.concatenate([p.samples for p in run]).astype(np.float32, copy=False)
    return Audio(run[0].start, samples, run[-1].ends_segment)
