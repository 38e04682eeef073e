"""Sample models trained on data that ships with a package (no downloads).

The digits sample is scikit-learn's bundled copy of the UCI optical handwritten digits:
1,797 real 8x8 grey-level images of digits written by 43 people, values 0-16. It is small
enough to train in seconds on a laptop CPU and real enough that quantization errors show.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._tf import import_tensorflow, seed_training

DIGIT_LABELS = [str(i) for i in range(10)]


@dataclass
class DigitsSample:
    """Where :func:`train_digits` wrote its files, and the Keras model's test accuracy."""

    model: Path
    train: Path
    test: Path
    labels: Path
    test_accuracy: float


def digits_split(
    seed: int = 0, test_fraction: float = 0.25
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """Digits as float images in [0, 1] of shape (8, 8, 1), split stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return x_train, y_train, x_test, y_test


def build_digits_model() -> Any:
    """A small CNN for 8x8 digits (about 71k parameters)."""
    import_tensorflow()
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probs"),
        ],
        name="digits",
    )


def train_digits(out_dir: str | Path, epochs: int = 30, seed: int = 0) -> DigitsSample:
    """Train the digits CNN and write ``digits.keras``, ``train.npz``, ``test.npz``, ``labels.txt``.

    ``train.npz`` doubles as calibration data; ``test.npz`` is the held-out split.
    """
    import_tensorflow()
    import keras

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed_training(seed)
    x_train, y_train, x_test, y_test = digits_split(seed)
    model = build_digits_model()
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    accuracy = float(model.evaluate(x_test, y_test, verbose=0)[1])
    # Save the inference model only: the optimizer state would triple the file size.
    clean = build_digits_model()
    clean.set_weights(model.get_weights())
    paths = DigitsSample(
        model=out / "digits.keras",
        train=out / "train.npz",
        test=out / "test.npz",
        labels=out / "labels.txt",
        test_accuracy=accuracy,
    )
    clean.save(paths.model)
    np.savez(paths.train, x=x_train, y=y_train)
    np.savez(paths.test, x=x_test, y=y_test)
    paths.labels.write_text("\n".join(DIGIT_LABELS) + "\n", encoding="utf-8")
    return paths
