"""The corruptions do what their names and levels say, on real data."""

from __future__ import annotations

import numpy as np
import pytest

from edgedl.converters.readiness.corruptions import (
    CORRUPTIONS,
    GARBAGE,
    corruptions_for,
    input_kind,
)


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    from sklearn.datasets import load_digits

    return (load_digits().images[:64] / 16.0).astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """A second of a tone with a falling envelope (stands in for a word), 4 samples."""
    t = np.arange(16000) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)).astype(np.float32)
    return np.stack([wave * g for g in (1.0, 0.5, 0.8, 0.2)])


def test_the_input_kind_comes_from_the_sample_shape():
    assert input_kind((8, 8, 1)) == "image"
    assert input_kind((224, 224, 3)) == "image"
    assert input_kind((16000,)) == "audio"
    assert input_kind((16000, 1)) == "audio"
    assert input_kind((3,)) == "tensor"
    assert [c.name for c in corruptions_for("tensor")] == []


@pytest.mark.parametrize("name", [c.name for c in corruptions_for("image")])
def test_image_damage_grows_with_severity_and_stays_in_range(name, digits_x):
    corruption = CORRUPTIONS[name]
    errors = []
    for severity in (1, 2, 3, 4):
        bad = corruption(digits_x, severity, np.random.default_rng(0), (0.0, 1.0))
        assert bad.shape == digits_x.shape and bad.dtype == np.float32
        assert bad.min() >= 0.0 and bad.max() <= 1.0
        errors.append(float(np.mean(np.abs(bad - digits_x))))
    assert errors[0] > 0
    assert errors[3] > errors[0]


def test_noise_is_added_at_the_signal_to_noise_ratio_asked(speech):
    for severity, snr in zip((1, 2, 3, 4), CORRUPTIONS["noise_snr"].levels, strict=True):
        noisy = CORRUPTIONS["noise_snr"](speech, severity, np.random.default_rng(1), (-1, 1))
        noise = noisy - speech
        measured = 10 * np.log10(np.mean(speech**2, axis=1) / np.mean(noise**2, axis=1))
        assert measured == pytest.approx(np.full(4, snr), abs=0.01)


def test_gain_clipping_and_shift_on_audio(speech):
    rng = np.random.default_rng(0)
    louder = CORRUPTIONS["gain"](speech, 4, rng, (-1, 1))
    assert np.max(np.abs(louder)) / np.max(np.abs(speech)) == pytest.approx(10 ** (12 / 20))
    clipped = CORRUPTIONS["clipping"](speech, 4, rng, (-1, 1))
    assert np.allclose(np.max(np.abs(clipped), axis=1), 0.1 * np.max(np.abs(speech), axis=1))
    shifted = CORRUPTIONS["time_shift"](speech, 3, rng, (-1, 1))
    k = 16000 // 4
    assert np.all(shifted[:, :k] == 0) and np.array_equal(shifted[:, k:], speech[:, :-k])


def test_garbage_is_what_it_says(digits_x):
    rng = np.random.default_rng(0)
    made = {n: g.batch(digits_x[:4], (0.0, 1.0), rng) for n, g in GARBAGE.items()}
    assert not made["zeros"].any()
    assert np.isnan(made["nan"]).any() and np.isinf(made["inf"]).any()
    assert made["empty"].shape[0] == 0
    assert made["wrong_shape"].shape == (4, 63)
    assert np.abs(made["extreme"]).min() >= 1e6
