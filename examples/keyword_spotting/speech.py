"""Synthetic audio for the keyword-spotting example: espeak-ng words and coloured noise.

Every word is spoken by espeak-ng (a formant synthesizer, Debian package ``espeak-ng``) with
a given voice, speed (words per minute) and pitch (0-99), resampled from espeak's 22,050 Hz
to 16 kHz and trimmed to where it is audible. Noise is white, pink (1/f) or brown (1/f²),
made in NumPy. Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.signal import resample_poly

from edgedl.agent.pipeline.audio import read_wav

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050
SPEECH_RMS = 0.1  # -20 dBFS: the level SNRs are measured against
NOISE_KINDS = ("white", "pink", "brown")

Audio = NDArray[np.float32]


@dataclass(frozen=True)
class Voice:
    """How espeak-ng says a word: voice (with optional +variant), speed (wpm) and pitch."""

    voice: str
    speed: int
    pitch: int

    def __str__(self) -> str:
        return f"{self.voice}/s{self.speed}/p{self.pitch}"


def espeak_available() -> bool:
    """Whether the espeak-ng program is on the PATH."""
    return shutil.which("espeak-ng") is not None


def speak(word: str, voice: Voice, workdir: Path | None = None) -> Audio:
    """``word`` spoken by espeak-ng, at 16 kHz, trimmed, scaled to RMS ``SPEECH_RMS``."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out = Path(tmp) / "word.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice.voice, "-s", str(voice.speed), "-p", str(voice.pitch),
             "-w", str(out), word],
            check=True, capture_output=True,
        )  # fmt: skip
        samples, rate = read_wav(out)
    audio = resample_poly(samples, SAMPLE_RATE, rate).astype(np.float32)
    audio = trim(audio)
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    return (audio * (SPEECH_RMS / rms)).astype(np.float32)


def trim(audio: Audio, frame: int = 160, below_peak_db: float = 35.0) -> Audio:
    """Cut leading and trailing frames quieter than ``below_peak_db`` under the loudest."""
    n = audio.shape[0] // frame
    if n == 0:
        return audio
    energy = 10 * np.log10(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy > energy.max() - below_peak_db)
    return audio[loud[0] * frame : (loud[-1] + 1) * frame]


def noise(kind: str, n: int, rng: np.random.Generator) -> Audio:
    """``n`` samples of white, pink or brown noise with unit RMS."""
    white = rng.standard_normal(n)
    if kind == "white":
        shaped = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1] if n > 1 else 1.0
        power = 1.0 if kind == "pink" else 2.0  # 1/f or 1/f² in power
        shaped = np.fft.irfft(spectrum / freqs ** (power / 2), n)
    shaped = shaped - shaped.mean()
    return (shaped / (np.sqrt(np.mean(shaped**2)) + 1e-12)).astype(np.float32)


def noise_at_snr(kind: str, n: int, snr_db: float, rng: np.random.Generator) -> Audio:
    """Noise whose RMS sits ``snr_db`` below speech at ``SPEECH_RMS``."""
    return (noise(kind, n, rng) * SPEECH_RMS / 10 ** (snr_db / 20)).astype(np.float32)
