"""Train the keyword model on log-mel windows and convert it to a tflite-int8 bundle.

The features come from :func:`edgedl.agent.pipeline.features.log_mel` with the options of
the pipeline's ``features`` stage, so the model sees on the device exactly what it was
trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from data import CLASSES
from numpy.typing import NDArray
from speech import SAMPLE_RATE

from edgedl.agent.pipeline.config import FeaturesConfig, PipelineConfig
from edgedl.agent.pipeline.features import log_mel


def features_of(pipeline: PipelineConfig, windows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Log-mel features of raw windows, with the pipeline's own feature options."""
    stage = next(s for s in pipeline.stages if isinstance(s, FeaturesConfig))
    feats = [
        log_mel(windows[i : i + 256], SAMPLE_RATE, stage.n_mels, stage.n_fft, stage.hop,
                stage.fmin, stage.fmax)
        for i in range(0, len(windows), 256)
    ]  # fmt: skip
    return np.concatenate(feats)[..., None]


def build_model(input_shape: tuple[int, ...], mean: float, std: float) -> Any:
    """A small CNN (about 19k parameters) over the (frames, mels, 1) log-mel image."""
    import keras

    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape, name="log_mel"),
            layers.Rescaling(1.0 / std, offset=-mean / std),
            layers.Conv2D(16, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Conv2D(48, 3, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.GlobalMaxPooling2D(),
            layers.Dropout(0.3),
            layers.Dense(len(CLASSES), activation="softmax", name="scores"),
        ],
        name="keywords",
    )


@dataclass
class Trained:
    """Where the trained model and its data went, and its held-out window accuracy."""

    model: Path
    calibration: Path
    validation: Path
    labels: Path
    val_accuracy: float


def train(
    x: NDArray[np.float32], y: NDArray[np.int64], out: Path, epochs: int, seed: int = 0
) -> Trained:
    """Fit the CNN on features ``x``/labels ``y`` (a 15% split held out) and save it."""
    from edgedl.converters.samples import seed_training

    seed_training(seed)  # also imports TensorFlow quietly
    import keras

    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_val = len(x) * 15 // 100
    x_val, y_val, x_train, y_train = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    model = build_model(x.shape[1:], float(x_train.mean()), float(x_train.std()))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=64,
              verbose=0)  # fmt: skip
    _, accuracy = model.evaluate(x_val, y_val, verbose=0)
    out.mkdir(parents=True, exist_ok=True)
    trained = Trained(out / "keywords.keras", out / "calibration.npz", out / "validation.npz",
                      out / "labels.txt", float(accuracy))  # fmt: skip
    model.save(trained.model)
    np.savez(trained.calibration, x=x_train[:400], y=y_train[:400])
    np.savez(trained.validation, x=x_val, y=y_val)
    trained.labels.write_text("\n".join(CLASSES) + "\n")
    return trained


def convert_int8(trained: Trained, bundle: Path) -> dict[str, Any]:
    """Convert the Keras model to a tflite-int8 bundle; return the conversion report."""
    from edgedl.converters import ConvertOptions, convert

    result = convert(
        trained.model,
        ConvertOptions(
            target="tflite-int8",
            name="keywords",
            calibration=trained.calibration,
            validation=trained.validation,
            labels=trained.labels,
            output=bundle,
            force=True,
        ),
    )
    return result.report
