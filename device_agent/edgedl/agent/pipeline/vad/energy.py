"""The ``energy`` VAD engine: frame energy against an adaptive noise floor, in NumPy."""

from __future__ import annotations

from collections import deque

import numpy as np

from ..stream import Samples


class EnergyEngine:
    """Speech is a frame more than ``threshold_db`` louder than the noise floor.

    The floor is the quietest frame of the last ``floor_window_s`` seconds (minimum
    statistics), so it follows a noise that gets louder within that time and drops at once
    when the noise gets quieter; it never goes below ``min_floor_db`` (dB full scale), so a
    stretch of digital silence does not make the first noise after it look like speech.
    """

    def __init__(
        self,
        sample_rate: int,
        frame_ms: float = 20,
        threshold_db: float = 6,
        floor_window_s: float = 1,
        min_floor_db: float = -60,
    ) -> None:
        self.frame_size = max(1, round(sample_rate * frame_ms / 1000))
        self.threshold_db = threshold_db
        self.min_floor_db = min_floor_db
        self._energies: deque[float] = deque(maxlen=max(1, round(floor_window_s * 1000 / frame_ms)))

    def is_speech(self, frame: Samples) -> bool:
        """True when the frame stands out from the noise floor."""
        energy = 10.0 * float(np.log10(np.mean(np.square(frame, dtype=np.float64)) + 1e-12))
        self._energies.append(energy)
        floor = max(min(self._energies), self.min_floor_db)
        return energy > floor + self.threshold_db

    def reset(self) -> None:
        """Forget the noise floor."""
        self._energies.clear()
