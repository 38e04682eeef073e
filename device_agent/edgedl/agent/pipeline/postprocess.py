"""The ``postprocess`` stage: smoothed scores over a threshold become events."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import ConfigError

from .stream import Event, Stage, Window


class PostprocessStage(Stage):
    """Average each class's score over the last ``smooth_windows`` windows of a stretch of
    speech; when a label in ``thresholds`` reaches its threshold, emit an event, then stay
    quiet about that label for ``refractory_ms`` (one spoken word fires once, not once per
    overlapping window).

    An event spans the audio that all the averaged windows share (where the word must be),
    or the newest window when they share none.
    """

    unit_in = "windows"
    unit_out = "events"

    def __init__(
        self,
        name: str,
        sample_rate: int,
        labels: list[str],
        thresholds: dict[str, float],
        smooth_windows: int = 3,
        refractory_ms: float = 1000,
    ) -> None:
        super().__init__(name)
        for label in thresholds:
            if label not in labels:
                raise ConfigError(
                    f"thresholds.{label}: no such class (the model's classes: {', '.join(labels)})"
                )
        self.labels = labels
        self._watch = [(labels.index(label), label, t) for label, t in thresholds.items()]
        self._rate = sample_rate
        self._refractory = refractory_ms / 1000
        self._recent: deque[Window] = deque(maxlen=smooth_windows)
        self._last_fired: dict[str, float] = {}

    def _process(self, items: list[Any]) -> list[Any]:
        events: list[Event] = []
        for w in items:
            assert isinstance(w, Window)
            if self._recent and self._recent[-1].segment != w.segment:
                self._recent.clear()
            self._recent.append(w)
            smoothed: NDArray[np.float32] = np.mean([r.data for r in self._recent], axis=0)
            now = w.end / self._rate
            for index, label, threshold in self._watch:
                score = float(smoothed[index])
                last = self._last_fired.get(label)
                if score < threshold or (last is not None and now - last < self._refractory):
                    continue
                self._last_fired[label] = now
                events.append(self._event(label, score))
        return events

    def _event(self, label: str, score: float) -> Event:
        start = max(r.start for r in self._recent)
        end = min(r.end for r in self._recent)
        if end <= start:
            start, end = self._recent[-1].start, self._recent[-1].end
        return Event(label, start / self._rate, end / self._rate, score)

    def _flush(self) -> list[Any]:
        self._recent.clear()
        self._last_fired.clear()
        return []
