"""What flows between stages — audio pieces, windows — what comes out — detections, speech
segments, transcripts — and the stage interface.

Audio keeps its position in the stream (``start`` in samples from the stream's first sample),
so a stage after a VAD still knows when each sample was heard, and events carry timestamps
measured from the start of the stream whatever was dropped on the way.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from .stats import StageStats

Samples = NDArray[np.float32]


@dataclass
class Audio:
    """Consecutive samples (float32 in [-1, 1]) starting ``start`` samples into the stream.

    ``ends_segment`` marks the last piece of a stretch of kept audio: the next piece, if any,
    starts after a gap (a VAD dropped what lay between).
    """

    start: int
    samples: Samples
    ends_segment: bool = False

    @property
    def end(self) -> int:
        """The sample index just past this piece."""
        return self.start + int(self.samples.shape[0])


@dataclass
class Window:
    """A fixed-length stretch of audio and what later stages made of it.

    ``start``/``end`` are sample indices of the real audio in the window (a window padded at
    the end of a segment has ``end - start`` below its length); ``data`` is the raw samples,
    then the features, then the model's float scores; ``segment`` numbers the stretch of kept
    audio the window came from, so smoothing never mixes two utterances.
    """

    start: int
    end: int
    segment: int
    data: NDArray[np.float32]


@dataclass(frozen=True)
class Event:
    """A detection: ``label`` heard from ``start`` to ``end`` seconds into the stream."""

    label: str
    start: float
    end: float
    score: float
    kind: ClassVar[str] = "detection"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (times in seconds, rounded to the millisecond)."""
        return {
            "kind": self.kind,
            "label": self.label,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "score": round(self.score, 4),
        }


@dataclass(frozen=True)
class Segment:
    """A stretch of speech a VAD kept, ``start`` to ``end`` seconds into the stream.

    The times include the VAD's padding before and hangover after the speech.
    ``mean_probability``/``peak_probability`` are the engine's speech probability over the
    segment's frames, for engines that have one (Silero: ``onnx``); ``None`` otherwise.
    """

    start: float
    end: float
    engine: str
    stage: str
    mean_probability: float | None = None
    peak_probability: float | None = None
    kind: ClassVar[str] = "segment"

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (times in seconds, rounded to the millisecond)."""
        return {
            "kind": self.kind,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "engine": self.engine,
            "stage": self.stage,
            "mean_probability": _round(self.mean_probability),
            "peak_probability": _round(self.peak_probability),
        }


@dataclass(frozen=True)
class Transcript:
    """What a recognizer heard in one segment (``start``/``end`` in seconds).

    ``confidence`` is the mean posterior probability of the recognised words (0 when there
    are none); ``words`` are the words without fillers.
    """

    start: float
    end: float
    text: str
    words: tuple[str, ...]
    confidence: float
    stage: str
    kind: ClassVar[str] = "transcript"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "kind": self.kind,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "words": len(self.words),
            "confidence": round(self.confidence, 4),
            "stage": self.stage,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


#: What a pipeline gives out: each has ``kind``, ``start``, ``end`` and ``to_dict()``.
Output = Event | Segment | Transcript

Item = Audio | Window | Event


class Stage(ABC):
    """One step of a pipeline. ``process`` takes the previous stage's items, returns its own.

    Stages keep whatever state they need between calls, so a stream cut into chunks
    anywhere gives the same output as the whole stream at once. Subclasses implement
    ``_process``/``_flush`` and say what they count (``unit_in``/``unit_out``).
    """

    unit_in: ClassVar[str] = "samples"
    unit_out: ClassVar[str] = "samples"

    def __init__(self, name: str) -> None:
        self.name = name
        self.stats = StageStats(self.unit_in, self.unit_out)
        self._side: list[Output] = []

    def side_outputs(self) -> list[Output]:
        """Outputs this stage produced besides its items (a VAD's segments), since last asked."""
        out, self._side = self._side, []
        return out

    def process(self, items: list[Any]) -> list[Any]:
        """Run the stage on ``items`` and record counts and latency."""
        if not items:
            return []
        t0 = time.perf_counter()
        out = self._process(items)
        self.stats.record(self.count(items), self.count(out), time.perf_counter() - t0)
        return out

    def flush(self) -> list[Any]:
        """End of stream: return what is still held back, and get ready for a new stream."""
        t0 = time.perf_counter()
        out = self._flush()
        if out:
            self.stats.record(0, self.count(out), time.perf_counter() - t0)
        return out

    @staticmethod
    def count(items: list[Any]) -> int:
        """How many units ``items`` hold: samples for audio, one per window or event."""
        return sum(int(i.samples.shape[0]) if isinstance(i, Audio) else 1 for i in items)

    @abstractmethod
    def _process(self, items: list[Any]) -> list[Any]: ...

    def _flush(self) -> list[Any]:
        return []

    def extra_stats(self) -> dict[str, Any]:
        """Figures particular to this stage, merged into its :meth:`StageStats.to_dict`."""
        return {}
