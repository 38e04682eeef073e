"""Corruptions of model inputs, with four severities each, chosen by the kind of input.

Images (``[H, W, C]`` samples): Gaussian noise, blur, brightness, contrast, occlusion and
real JPEG compression. Audio (1-D waveforms): white noise at a signal-to-noise ratio, gain,
clipping and a time shift. Every corruption works in the data's own value range (taken from
the clean samples), so 0–1 images and 0–255 images get the same relative damage.

Separately, :data:`GARBAGE` lists what a broken device sends whatever the model: all zeros,
a constant, extreme values, NaN, Inf, an empty tensor, a wrong shape and random input from
outside the data's distribution.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

InputKind = Literal["image", "audio", "tensor"]
Array = NDArray[np.float32]
SEVERITIES = (1, 2, 3, 4)


@dataclass(frozen=True)
class Corruption:
    """One corruption: its name, the input kind it applies to, and its four strengths."""

    name: str
    kind: InputKind
    levels: tuple[float, float, float, float]
    unit: str
    apply: Callable[[Array, float, np.random.Generator, tuple[float, float]], Array]

    def __call__(
        self, x: Array, severity: int, rng: np.random.Generator, value_range: tuple[float, float]
    ) -> Array:
        """``x`` (a batch) corrupted at ``severity`` (1–4)."""
        return self.apply(x, self.levels[severity - 1], rng, value_range).astype(np.float32)


def input_kind(sample_shape: Sequence[int]) -> InputKind:
    """``image`` for [H, W, 1|3] samples, ``audio`` for long 1-D ones, else ``tensor``."""
    shape = tuple(sample_shape)
    if len(shape) == 3 and shape[-1] in (1, 3) and min(shape[:2]) >= 4:
        return "image"
    if (len(shape) == 1 and shape[0] >= 1000) or (len(shape) == 2 and shape[1] == 1):
        return "audio"
    return "tensor"


def _span(value_range: tuple[float, float]) -> float:
    return max(value_range[1] - value_range[0], 1e-6)


def _clip(x: Array, value_range: tuple[float, float]) -> Array:
    return np.clip(x, value_range[0], value_range[1])


def _noise(x: Array, level: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    return _clip(x + rng.normal(0.0, level * _span(r), x.shape).astype(np.float32), r)


def _blur(x: Array, sigma: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    radius = max(1, int(np.ceil(2 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = x
    for axis in (1, 2):  # separable Gaussian over height and width, edges repeated
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(  # type: ignore[assignment]
            w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(taps)
        )
    return out


def _brightness(x: Array, level: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    return _clip(x + level * _span(r), r)


def _contrast(x: Array, factor: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
    return _clip((x - mean) * factor + mean, r)


def _occlusion(x: Array, area: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    out = x.copy()
    h, w = x.shape[1], x.shape[2]
    side_h, side_w = max(1, round(h * area**0.5)), max(1, round(w * area**0.5))
    for i in range(len(x)):
        top = int(rng.integers(0, h - side_h + 1))
        left = int(rng.integers(0, w - side_w + 1))
        out[i, top : top + side_h, left : left + side_w] = r[0]
    return out


def _jpeg(x: Array, quality: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    from PIL import Image

    span = _span(r)
    out = np.empty_like(x)
    for i, sample in enumerate(x):
        pixels = np.round((np.clip(sample, r[0], r[1]) - r[0]) / span * 255.0).astype(np.uint8)
        img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            back = np.asarray(decoded, dtype=np.float32).reshape(sample.shape)
        out[i] = back / 255.0 * span + r[0]
    return out


def _rms(x: Array) -> NDArray[np.float32]:
    axes = tuple(range(1, x.ndim))
    return np.sqrt(np.mean(np.square(x), axis=axes, keepdims=True))  # type: ignore[no-any-return]


def _snr_noise(x: Array, snr_db: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    noise = rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    noise *= _rms(x) / np.maximum(_rms(noise), 1e-12) / np.float32(10 ** (snr_db / 20))
    return x + noise


def _gain(x: Array, db: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    return x * np.float32(10 ** (db / 20))


def _clipping(x: Array, share: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    axes = tuple(range(1, x.ndim))
    peak = np.max(np.abs(x), axis=axes, keepdims=True) * np.float32(share)
    return np.clip(x, -peak, peak)


def _shift(x: Array, share: float, rng: np.random.Generator, r: tuple[float, float]) -> Array:
    n = x.shape[1]
    k = round(n * share)
    out = np.zeros_like(x)
    out[:, k:] = x[:, : n - k]
    return out


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("gaussian_noise", "image", (0.04, 0.08, 0.16, 0.32), "σ × range", _noise),
        Corruption("blur", "image", (0.5, 0.8, 1.2, 2.0), "σ px", _blur),
        Corruption("brightness", "image", (0.1, 0.2, 0.35, 0.5), "+ range", _brightness),
        Corruption("contrast", "image", (0.8, 0.6, 0.4, 0.2), "× contrast", _contrast),
        Corruption("occlusion", "image", (0.1, 0.2, 0.35, 0.5), "area share", _occlusion),
        Corruption("jpeg", "image", (75, 40, 20, 8), "JPEG quality", _jpeg),
        Corruption("noise_snr", "audio", (30.0, 20.0, 10.0, 0.0), "SNR dB", _snr_noise),
        Corruption("gain", "audio", (-6.0, -12.0, 6.0, 12.0), "dB", _gain),
        Corruption("clipping", "audio", (0.8, 0.5, 0.3, 0.1), "× peak", _clipping),
        Corruption("time_shift", "audio", (0.05, 0.1, 0.25, 0.5), "share of length", _shift),
    )
}


def corruptions_for(kind: InputKind) -> list[Corruption]:
    """The corruptions that make sense for inputs of ``kind`` (none for a plain tensor)."""
    return [c for c in CORRUPTIONS.values() if c.kind == kind]


@dataclass(frozen=True)
class Garbage:
    """A tensor a broken sensor or client sends. ``batch`` builds it from one clean batch."""

    name: str
    description: str
    batch: Callable[[Array, tuple[float, float], np.random.Generator], NDArray[Any]]
    has_shape: bool = True  # False: the model cannot even be run on it


def _extreme(x: Array, r: tuple[float, float], rng: np.random.Generator) -> Array:
    big = np.float32(1e6 * max(abs(r[0]), abs(r[1]), 1.0))
    return np.where(rng.random(x.shape) < 0.5, -big, big).astype(np.float32)


def _ood(x: Array, r: tuple[float, float], rng: np.random.Generator) -> Array:
    return rng.uniform(r[0], r[1], x.shape).astype(np.float32)


def _with_nonfinite(value: float) -> Callable[[Array, tuple[float, float], Any], Array]:
    def make(x: Array, r: tuple[float, float], rng: np.random.Generator) -> Array:
        out = x.copy()
        flat = out.reshape(len(out), -1)
        flat[:, :: max(1, flat.shape[1] // 8)] = value
        return out

    return make


GARBAGE: dict[str, Garbage] = {
    g.name: g
    for g in (
        Garbage("zeros", "all zeros (a dead sensor)", lambda x, r, rng: np.zeros_like(x)),
        Garbage(
            "constant",
            "one constant value (the range's midpoint)",
            lambda x, r, rng: np.full_like(x, (r[0] + r[1]) / 2),
        ),
        Garbage("extreme", "±1e6 × range (an overflowed driver)", _extreme),
        Garbage("nan", "NaN in every 8th value", _with_nonfinite(float("nan"))),
        Garbage("inf", "+Inf in every 8th value", _with_nonfinite(float("inf"))),
        Garbage("random", "uniform noise over the range (never seen)", _ood),
        Garbage("empty", "a tensor with no samples", lambda x, r, rng: x[:0], has_shape=False),
        Garbage(
            "wrong_shape",
            "one value missing per sample",
            lambda x, r, rng: x.reshape(len(x), -1)[:, :-1],
            has_shape=False,
        ),
    )
}
