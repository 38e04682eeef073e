"""Segment-level stages: one call per utterance instead of one per sliding window.

A :class:`SegmentStage` gathers the audio of each stretch a VAD kept (up to its
``ends_segment`` marker, or a gap in the stream) and hands it over whole to
:meth:`SegmentStage.on_segment`. Speech longer than ``max_segment_s`` is cut into pieces of
at most that length, so memory and the latency of one call stay bounded. Without a VAD in
front, the whole stream is one segment, cut the same way.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import numpy as np

from .stream import Audio, Output, Samples, Stage


class SegmentStage(Stage):
    """Base of stages that consume whole segments; subclasses implement :meth:`on_segment`."""

    unit_in = "samples"

    def __init__(self, name: str, sample_rate: int, max_segment_s: float) -> None:
        super().__init__(name)
        self.sample_rate = sample_rate
        self.max_samples = max(1, round(max_segment_s * sample_rate))
        self.calls = 0
        self.splits = 0  # pieces cut off because a segment reached max_segment_s
        self._pieces: list[Samples] = []
        self._held = 0
        self._start = 0

    def _process(self, items: list[Any]) -> list[Any]:
        out: list[Output] = []
        for item in items:
            assert isinstance(item, Audio)
            if self._held and item.start != self._start + self._held:
                self._finish(out)  # a gap without an end marker: never join across it
            samples = item.samples
            while samples.size:
                if not self._held:
                    self._start = item.end - samples.shape[0]
                take = min(samples.shape[0], self.max_samples - self._held)
                self._pieces.append(samples[:take])
                self._held += take
                samples = samples[take:]
                if self._held >= self.max_samples:
                    self.splits += 1
                    self._finish(out)
            if item.ends_segment and self._held:
                self._finish(out)
        return out

    def _finish(self, out: list[Output]) -> None:
        audio = np.concatenate(self._pieces).astype(np.float32, copy=False)
        start = self._start
        self._pieces, self._held = [], 0
        self.calls += 1
        out.extend(self.on_segment(start, audio))

    def _flush(self) -> list[Any]:
        out: list[Output] = []
        if self._held:
            self._finish(out)
        return out

    @abstractmethod
    def on_segment(self, start: int, audio: Samples) -> list[Output]:
        """Outputs for one segment: ``audio`` starts ``start`` samples into the stream."""

    def extra_stats(self) -> dict[str, Any]:
        """Calls (segments handled) and the pieces cut at ``max_segment_s``."""
        return {"calls": self.calls, "splits": self.splits}
