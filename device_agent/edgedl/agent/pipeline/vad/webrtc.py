"""The ``webrtc`` VAD engine: Google's WebRTC VAD through webrtcvad-wheels."""

from __future__ import annotations

import math

import numpy as np

from ..stream import Samples


class WebrtcEngine:
    """WebRTC's GMM VAD on 10/20/30 ms frames of 16-bit audio; ``aggressiveness`` 0-3.

    A fresh detector calls the first 90-120 ms of a stream speech whatever it hears (its
    noise model starts empty). ``warmup_ms`` feeds that start to the detector but reports it
    as non-speech.
    """

    def __init__(
        self, sample_rate: int, aggressiveness: int = 2, frame_ms: int = 30, warmup_ms: float = 0
    ) -> None:
        import webrtcvad

        self.frame_size = sample_rate * frame_ms // 1000
        self._sample_rate = sample_rate
        self._aggressiveness = aggressiveness
        self._warmup_frames = math.ceil(warmup_ms / frame_ms)
        self._frames = 0
        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: Samples) -> bool:
        """WebRTC's decision for one frame (False during the warm-up)."""
        pcm = np.clip(np.round(frame * 32768.0), -32768, 32767).astype("<i2").tobytes()
        speech = bool(self._vad.is_speech(pcm, self._sample_rate))
        self._frames += 1
        return speech and self._frames > self._warmup_frames

    def reset(self) -> None:
        """A fresh detector (WebRTC's VAD adapts to the stream it hears)."""
        import webrtcvad

        self._vad = webrtcvad.Vad(self._aggressiveness)
        self._frames = 0
