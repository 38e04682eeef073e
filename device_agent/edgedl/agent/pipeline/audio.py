"""Reading audio for a pipeline: WAV files and raw 16-bit PCM."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from edgedl.errors import DataError

from .stream import Samples


def pcm16_to_float(pcm: bytes) -> Samples:
    """Little-endian signed 16-bit samples (s16le) to float32 in [-1, 1)."""
    return (np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0).astype(np.float32)


def float_to_pcm16(samples: Samples) -> bytes:
    """Float samples in [-1, 1] to s16le bytes (clipped)."""
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def read_wav(path: str | Path) -> tuple[Samples, int]:
    """The samples (float32, channels averaged) and sample rate of a 16-bit PCM WAV file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input not found: {p}")
    try:
        with wave.open(str(p), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{p}: not a readable WAV file ({exc or 'truncated'})") from exc
    if width != 2:
        raise DataError(f"{p}: {8 * width}-bit WAV; only 16-bit PCM is supported")
    samples = pcm16_to_float(frames[: len(frames) - len(frames) % (2 * channels)])
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.float32)
    return samples, rate


def write_wav(path: str | Path, samples: Samples, sample_rate: int) -> None:
    """Write mono float samples as a 16-bit PCM WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(float_to_pcm16(samples))
