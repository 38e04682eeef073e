"""Fine-tune the digits CNN on samples exported from the field plus its original training data.

``python -m edgedl.demo.retrain --model digits.keras --samples labelled.npz --field field.npz
--train train.npz --rate 0.5 --output retrain/`` (what ``edgedl demo --loop`` runs, seeded):

* ``labelled.npz`` (``edgedl collector export --labelled``): the field's labelled samples.
  The agent kept every low-confidence answer and a share ``rate`` of the others, so
  low-confidence samples are over-represented. The samples chosen at random (reason
  ``rate``) plus a seeded share ``rate`` of the low-confidence ones give every request the
  same chance (while the hourly bound did not bite): an unbiased sample of the stream.
  Half of that unbiased sample is held out as ``validation.npz``: the new version's
  reference profile (the stream it will serve: the inputs that raised the drift alert
  against the old version are its normal), the calibration of its estimated accuracy, and
  the judge of the fine-tuning. The other labelled samples are repeated until they weigh
  :data:`FIELD_SHARE` of the fine-tuning set, the original training digits being the rest,
  so the model learns the new inputs without forgetting the old ones.
* ``field.npz`` (``edgedl collector export``, labels or not): the inputs the devices see
  now, the new version's quantization calibration (``calibration.npz``).

Writes ``digits.keras`` (the fine-tuned model), ``validation.npz``, ``calibration.npz`` and
``report.json`` (accuracy of the old and the new model on the held-out samples).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import DataError

#: Share of the fine-tuning set taken by (repeated) field samples.
FIELD_SHARE = 0.5
#: Share of the unbiased labelled field samples held out (validation and reference).
HELD_OUT = 0.5
#: Fewest labelled samples worth fine-tuning on.
MIN_SAMPLES = 20


@dataclass
class RetrainReport:
    """What fine-tuning did and how much better the model got on held-out field samples."""

    field_samples: int
    fine_tune_samples: int
    held_out: int
    original_samples: int
    epochs: int
    seed: int
    accuracy_before: float
    accuracy_after: float


def _load(path: Path, *keys: str) -> dict[str, NDArray[Any]]:
    try:
        with np.load(path) as data:
            missing = [k for k in keys if k not in data]
            if missing:
                raise DataError(f"{path} has no {', '.join(missing)} array")
            return {k: np.asarray(data[k]) for k in keys}
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def retrain(
    model: Path,
    samples: Path,
    field: Path,
    train: Path,
    output: Path,
    epochs: int = 10,
    seed: int = 0,
    rate: float = 1.0,
) -> RetrainReport:
    """Fine-tune ``model`` (see the module docstring); write the results into ``output``."""
    from edgedl.converters._tf import import_tensorflow, seed_training
    from edgedl.converters.samples import build_digits_model

    labelled = _load(samples, "x", "y", "reason")
    x, y = labelled["x"].astype(np.float32), labelled["y"].astype(np.int64)
    if len(x) < MIN_SAMPLES:
        raise DataError(
            f"{samples} holds {len(x)} labelled samples; fine-tuning needs {MIN_SAMPLES}"
        )
    original = _load(train, "x", "y")
    fielded = _load(field, "x")["x"].astype(np.float32)

    rng = np.random.default_rng(seed)
    fair = np.flatnonzero(unbiased(labelled["reason"], rate, rng))
    held = np.sort(rng.permutation(fair)[: max(1, round(len(fair) * HELD_OUT))])
    tune = np.setdiff1d(np.arange(len(x)), held)
    repeats = max(1, round(FIELD_SHARE / (1 - FIELD_SHARE) * len(original["x"]) / len(tune)))
    x_fit = np.concatenate([original["x"].astype(np.float32), np.repeat(x[tune], repeats, 0)])
    y_fit = np.concatenate([original["y"].astype(np.int64), np.repeat(y[tune], repeats, 0)])

    import_tensorflow()
    import keras

    seed_training(seed)
    net = keras.models.load_model(model, compile=False)
    before = _accuracy(net, x[held], y[held])
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    net.fit(x_fit, y_fit, epochs=epochs, batch_size=32, shuffle=True, verbose=0)
    after = _accuracy(net, x[held], y[held])

    output.mkdir(parents=True, exist_ok=True)
    clean = build_digits_model()  # the inference model only, as train_digits saves it
    clean.set_weights(net.get_weights())
    clean.save(output / "digits.keras")
    np.savez(output / "validation.npz", x=x[held], y=y[held])
    np.savez(output / "calibration.npz", x=fielded)
    report = RetrainReport(
        field_samples=len(x),
        fine_tune_samples=len(tune),
        held_out=len(held),
        original_samples=len(original["x"]),
        epochs=epochs,
        seed=seed,
        accuracy_before=before,
        accuracy_after=after,
    )
    (output / "report.json").write_text(json.dumps(asdict(report), indent=2), encoding="utf-8")
    return report


def unbiased(reasons: NDArray[Any], rate: float, rng: np.random.Generator) -> NDArray[np.bool_]:
    """Which samples a uniform draw at ``rate`` would have kept: every ``rate`` sample and a
    share ``rate`` of the ``low_confidence`` ones (which the agent kept with certainty)."""
    reasons = np.asarray(reasons).astype(str)
    draw = rng.random(len(reasons)) < rate
    return np.asarray((reasons == "rate") | ((reasons == "low_confidence") & draw))


def _accuracy(net: Any, x: NDArray[Any], y: NDArray[Any]) -> float:
    predicted = np.argmax(net.predict(x, verbose=0), axis=-1)
    return float(np.mean(predicted == y))


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model to fine-tune")
    parser.add_argument("--samples", type=Path, required=True, help="labelled field samples")
    parser.add_argument("--field", type=Path, required=True, help="field inputs (calibration)")
    parser.add_argument("--train", type=Path, required=True, help="original training data")
    parser.add_argument("--output", type=Path, required=True, help="folder to write")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=1.0, help="the agent's sampling rate")
    args = parser.parse_args(argv)
    try:
        report = retrain(args.model, args.samples, args.field, args.train, args.output,
                         args.epochs, args.seed, args.rate)  # fmt: skip
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(asdict(report)))


if __name__ == "__main__":
    main()
