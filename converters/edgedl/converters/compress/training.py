"""Fine-tuning and distillation with Keras ``fit``: one loss, progress on the terminal.

The loss is ``alpha`` times the cross-entropy with the labels plus ``1 - alpha`` times
``T^2`` times the cross-entropy between the teacher's and the student's outputs, both
softened by temperature ``T`` (Hinton et al., 2015). With ``alpha = 0`` no labels are used:
the student learns the teacher's outputs alone. Softmax outputs are softened as
``softmax(log(p) / T)``, which equals ``softmax(logits / T)``, so the model keeps its
softmax layer. The learning rate is constant, or (``schedule="cosine"``) decays from its
value to 0 along a half cosine over all the training steps. After each epoch the held-out
accuracy is measured and shown.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rich.console import Console

_EPS = 1e-7


@dataclass
class TrainingSpec:
    """How to train: epochs, batch, learning rate, and the distillation mix."""

    epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    alpha: float = 1.0  # weight of the labels' cross-entropy; the rest goes to the teacher
    temperature: float = 4.0
    schedule: str = "constant"  # or "cosine": the rate decays to 0 along a cosine over all steps


@dataclass
class History:
    """Per epoch: the training loss and the held-out accuracy (percent); and the time taken."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def softened(outputs: NDArray[np.float32], probabilities: bool, t: float) -> NDArray[np.float32]:
    """The outputs as a distribution softened by temperature ``t`` (NumPy, for the targets)."""
    z = np.log(np.clip(outputs, _EPS, 1.0)) if probabilities else outputs.astype(np.float64)
    z = z / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float32] = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return out


def distillation_loss(classes: int, spec: TrainingSpec, probabilities: bool) -> Callable[..., Any]:
    """A Keras loss whose ``y_true`` packs one-hot labels and the teacher's soft targets."""
    import keras
    from keras import ops

    t = spec.temperature
    alpha = spec.alpha

    def loss(y_true: Any, y_pred: Any) -> Any:
        hard, soft = y_true[:, :classes], y_true[:, classes:]
        z = ops.log(ops.clip(y_pred, _EPS, 1.0)) if probabilities else y_pred
        p = ops.softmax(z, axis=-1)
        total = 0.0
        if alpha > 0:
            total = alpha * keras.losses.categorical_crossentropy(hard, p)
        if alpha < 1:
            p_t = ops.softmax(z / t, axis=-1)
            kd = keras.losses.categorical_crossentropy(soft, p_t)
            total = total + (1.0 - alpha) * t * t * kd
        return total

    return loss


def accuracy(model: Any, x: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    """Top-1 accuracy of ``model`` on ``x`` against labels ``y``, in percent."""
    predicted = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)
    return float(np.mean(predicted == y) * 100.0)


def fit(
    model: Any,
    x: NDArray[np.float32],
    labels: NDArray[np.int64] | None,
    teacher_outputs: NDArray[np.float32] | None,
    validation: tuple[NDArray[np.float32], NDArray[np.int64]],
    spec: TrainingSpec,
    probabilities: bool,
    console: Console | None,
    title: str,
) -> History:
    """Train ``model`` in place for ``spec.epochs``; print one line per epoch on ``console``."""
    import keras

    classes = int(model.output_shape[-1])
    n = len(x)
    hard = np.zeros((n, classes), np.float32)
    if labels is not None:
        hard[np.arange(n), labels] = 1.0
    soft = (
        softened(teacher_outputs, probabilities, spec.temperature)
        if teacher_outputs is not None
        else np.zeros((n, classes), np.float32)
    )
    rate: Any = spec.learning_rate
    if spec.schedule == "cosine":
        steps = spec.epochs * -(-n // spec.batch_size)
        rate = keras.optimizers.schedules.CosineDecay(spec.learning_rate, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=distillation_loss(classes, spec, probabilities),
    )
    history = History()
    x_val, y_val = validation
    progress = _epoch_lines(
        console, title, spec.epochs, history, lambda: accuracy(model, x_val, y_val)
    )
    start = time.perf_counter()
    model.fit(
        x,
        np.concatenate([hard, soft], axis=1),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[progress],
    )
    history.seconds = time.perf_counter() - start
    return history


def _epoch_lines(
    console: Console | None,
    title: str,
    epochs: int,
    history: History,
    measure: Callable[[], float],
) -> Any:
    """A Keras callback: after each epoch, record loss and held-out accuracy and print them."""
    import keras

    start = time.perf_counter()

    class EpochLines(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            loss = float((logs or {}).get("loss", float("nan")))
            acc = measure()
            history.loss.append(loss)
            history.accuracy.append(acc)
            if console is not None:
                console.print(
                    f"  {title} epoch {epoch + 1}/{epochs}  loss {loss:.4f}  "
                    f"held-out accuracy {acc:.2f}%  ({time.perf_counter() - start:.0f} s)",
                    highlight=False,
                )

    return EpochLines()
