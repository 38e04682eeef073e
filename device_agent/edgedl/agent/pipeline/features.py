"""The ``features`` stage and :func:`log_mel`, the one log-mel function used to train and run.

A model trained on features from another implementation (librosa, torchaudio, TensorFlow's
signal ops) sees slightly different numbers on the device; the keyword-spotting example
trains on this very function so that cannot happen.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from .stream import Stage, Window

LOG_OFFSET = 1e-6


def _hz_to_mel(hz: NDArray[np.float64]) -> NDArray[np.float64]:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: NDArray[np.float64]) -> NDArray[np.float64]:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> NDArray[np.float32]:
    """Triangular filters on the HTK mel scale, shape ``(n_mels, n_fft // 2 + 1)``."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    mels = np.linspace(_hz_to_mel(np.array(fmin)), _hz_to_mel(np.array(fmax)), n_mels + 2)
    edges = _mel_to_hz(mels)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank.setflags(write=False)
    return bank.astype(np.float32)


def log_mel(
    samples: NDArray[np.floating[Any]],
    sample_rate: int,
    n_mels: int = 40,
    n_fft: int = 512,
    hop: int = 320,
    fmin: float = 20.0,
    fmax: float | None = None,
) -> NDArray[np.float32]:
    """Log-mel spectrogram of audio ``(..., n_samples)`` -> ``(..., n_frames, n_mels)``.

    Frames of ``n_fft`` samples every ``hop`` (no centring, so ``n_frames = 1 + (n - n_fft)
    // hop``), a Hann window, the power spectrum, mel filters, then ``log(mel + 1e-6)``.
    """
    x = np.asarray(samples, dtype=np.float32)
    if x.shape[-1] < n_fft:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n_fft - x.shape[-1])])
    frames = sliding_window_view(x, n_fft, axis=-1)[..., ::hop, :]
    spectrum = np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax or sample_rate / 2.0)
    mel: NDArray[np.float32] = np.log(power @ bank.T + LOG_OFFSET).astype(np.float32)
    return mel


class FeaturesStage(Stage):
    """Replace each window's samples with their log-mel spectrogram."""

    unit_in = "windows"
    unit_out = "windows"

    def __init__(
        self,
        name: str,
        sample_rate: int,
        n_mels: int = 40,
        n_fft: int = 512,
        hop: int = 320,
        fmin: float = 20.0,
        fmax: float | None = None,
    ) -> None:
        super().__init__(name)
        self.options: dict[str, Any] = {
            "sample_rate": sample_rate,
            "n_mels": n_mels,
            "n_fft": n_fft,
            "hop": hop,
            "fmin": fmin,
            "fmax": fmax,
        }

    def output_shape(self, window_length: int) -> tuple[int, ...]:
        """The feature shape of one window of ``window_length`` samples."""
        return tuple(log_mel(np.zeros(window_length, np.float32), **self.options).shape)

    def _process(self, items: list[Any]) -> list[Any]:
        windows: list[Window] = items
        feats = log_mel(np.stack([w.data for w in windows]), **self.options)
        return [Window(w.start, w.end, w.segment, f) for w, f in zip(windows, feats, strict=True)]
