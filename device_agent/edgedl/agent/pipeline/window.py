"""The ``window`` stage: kept audio becomes overlapping fixed-length windows."""

from __future__ import annotations

from typing import Any

import numpy as np

from .stream import Audio, Stage, Window


class WindowStage(Stage):
    """Windows of ``length_ms`` every ``hop_ms``, counted from the start of each stretch.

    A window never spans a gap left by a VAD. With ``pad_end`` each stretch ends with one
    window zero-padded past its last sample, so a word shorter than a window, or the tail of
    one, is still looked at.
    """

    unit_in = "samples"
    unit_out = "windows"

    def __init__(
        self, name: str, sample_rate: int, length_ms: float, hop_ms: float, pad_end: bool = True
    ) -> None:
        super().__init__(name)
        self.length = max(1, round(sample_rate * length_ms / 1000))
        self.hop = max(1, round(sample_rate * hop_ms / 1000))
        self.pad_end = pad_end
        self.segment = 0
        self._open = False
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream index of _buf[0], which is also the next window's start
        self._covered_to = 0  # stream index just past the last window of this stretch
        self._windows_in_segment = 0

    def _process(self, items: list[Any]) -> list[Any]:
        out: list[Window] = []
        for item in items:
            assert isinstance(item, Audio)
            if self._open and item.start != self._buf_start + self._buf.shape[0]:
                self._close(out)  # a gap without an end marker: never join across it
            if not self._open and item.samples.size:
                self._open = True
                self._buf = np.zeros(0, dtype=np.float32)
                self._buf_start = self._covered_to = item.start
                self._windows_in_segment = 0
            if self._open:
                self._buf = np.concatenate([self._buf, item.samples])
                self._emit_full(out)
            if item.ends_segment and self._open:
                self._close(out)
        return out

    def _emit_full(self, out: list[Window]) -> None:
        n = (
            (self._buf.shape[0] - self.length) // self.hop + 1
            if self._buf.shape[0] >= self.length
            else 0
        )
        for k in range(n):
            start = self._buf_start + k * self.hop
            data = self._buf[k * self.hop : k * self.hop + self.length].copy()
            out.append(Window(start, start + self.length, self.segment, data))
        if n:
            self._covered_to = self._buf_start + (n - 1) * self.hop + self.length
            self._buf = self._buf[n * self.hop :]
            self._buf_start += n * self.hop
            self._windows_in_segment += n

    def _close(self, out: list[Window]) -> None:
        end = self._buf_start + self._buf.shape[0]
        if self.pad_end and (self._windows_in_segment == 0 or self._covered_to < end):
            data = np.zeros(self.length, dtype=np.float32)
            real = self._buf[: self.length]
            data[: real.shape[0]] = real
            out.append(Window(self._buf_start, self._buf_start + real.shape[0], self.segment, data))
        self._open = False
        self._buf = np.zeros(0, dtype=np.float32)
        self.segment += 1

    def _flush(self) -> list[Any]:
        out: list[Window] = []
        if self._open:
            self._close(out)
        self.segment = 0
        return out
