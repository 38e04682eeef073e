"""``compress``: a Keras model and its data in, a smaller trained Keras model out.

Each method ends with a model ``edgedl convert`` takes as is (a ``.keras`` file with the
original input and output names), and a report of what changed: parameters, multiply-adds,
held-out accuracy before and after, training time and the method's own details.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from edgedl.errors import ModelError, UsageError

from .._tf import import_tensorflow, seed_training
from ..data import Dataset
from ..sources import _check_keras_file, _first_line, detect_kind
from .chain import Chain, build, is_softmax_output, read_chain
from .cluster import cluster_chain
from .distill import narrower, student_from_factory
from .lowrank import factorize_chain
from .measure import keras_macs, keras_parameters
from .options import (
    DEFAULT_EPOCHS,
    METHODS,
    PRUNE_RATIOS,
    CompressOptions,
    label_weight,
    load_data,
    schedule,
)
from .outcome import CompressResult, Measured, check_output, finish
from .prune import prune_chain
from .training import History, TrainingSpec, accuracy, fit


@dataclass
class _Data:
    train: Dataset
    val_x: Any
    val_y: Any
    teacher_train: Any
    probabilities: bool


def compress(
    model_path: str | Path, options: CompressOptions, console: Console | None = None
) -> CompressResult:
    """Compress the Keras model at ``model_path`` as ``options`` say; write ``options.output``.

    Raises :class:`ModelError` / :class:`DataError` / :class:`UsageError` for input the
    method cannot use, and :class:`ValidationFailed` when ``max_accuracy_drop`` is not met
    (nothing is written then).
    """
    if options.method not in METHODS:
        raise UsageError(f"unknown method {options.method!r} (choose from {', '.join(METHODS)})")
    schedule(options)  # an unknown schedule fails before any work
    epochs = DEFAULT_EPOCHS[options.method] if options.epochs is None else options.epochs
    if epochs < 0:
        raise UsageError(f"--epochs must be 0 or more, not {epochs}")
    out = Path(options.output)
    if detect_kind(Path(str(model_path))) == "torch":
        from .embedding_lowrank import compress_embedder, holds_named_inputs
        from .torch_run import compress_torch

        if holds_named_inputs(Path(options.data)):  # token ids and masks: an embedding model
            if options.method != "lowrank":
                raise UsageError(
                    "a model fed named inputs (no 'x' in the data) is compressed by "
                    f"--method lowrank only, not {options.method}"
                )
            return compress_embedder(
                str(model_path), Path(options.data), Path(options.validation), out,
                energy=options.energy, rank=options.rank, epochs=epochs,
                batch_size=options.batch_size, learning_rate=options.learning_rate,
                seed=options.seed, force=options.force, state_dict=options.state_dict,
                console=console,
            )  # fmt: skip

        check_output(out, ".pt", options.force)
        return compress_torch(str(model_path), options, epochs, console)
    check_output(out, ".keras", options.force)
    teacher = _load_keras(Path(model_path))
    import_tensorflow().get_logger().setLevel("ERROR")  # retracing notices between epochs
    seed_training(options.seed)
    data = _load_data(teacher, options)
    base_accuracy = accuracy(teacher, data.val_x, data.val_y)
    chain = read_chain(teacher)
    started = time.perf_counter()
    model, details, history = _METHOD_RUNNERS[options.method](
        teacher, chain, data, options, epochs, base_accuracy, console
    )
    seconds = time.perf_counter() - started
    common = {
        "method": options.method,
        "source": str(model_path),
        "seed": options.seed,
        "epochs": epochs,
        "labels_used": data.train.y is not None and label_weight(options, data.train) > 0,
        "schedule": schedule(options),
    }
    return finish(
        common,
        Measured(keras_parameters(teacher), keras_macs(teacher), base_accuracy),
        Measured(
            keras_parameters(model), keras_macs(model), accuracy(model, data.val_x, data.val_y)
        ),
        history,
        seconds,
        details,
        options.max_accuracy_drop,
        out,
        lambda path: _save_keras(model, path),
    )


def _save_keras(model: Any, path: Path) -> None:
    """Save the model uncompiled: no optimizer state (it would triple the file) and no
    training loss (a closure Keras could not load back)."""
    clean = type(model).from_config(model.get_config())
    clean.set_weights(model.get_weights())
    clean.save(path)


def _load_keras(path: Path) -> Any:
    kind = detect_kind(path)
    if kind != "keras":
        raise ModelError(
            f"edgedl compress takes Keras models (.keras, .h5); {path} is a {kind} model"
        )
    _check_keras_file(path)
    import_tensorflow()
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # ValueError, OSError, zipfile and h5py errors...
        raise ModelError(f"cannot read Keras model {path}: {_first_line(exc)}") from exc


def _load_data(teacher: Any, options: CompressOptions) -> _Data:
    shape = [-1 if d is None else int(d) for d in teacher.input_shape[1:]]
    train, val_x, val_y = load_data(options, shape, int(teacher.output_shape[-1]))
    probabilities = is_softmax_output(read_chain(teacher).links[-1])
    teacher_train = teacher.predict(train.x, batch_size=256, verbose=0)
    return _Data(train, val_x, val_y, teacher_train, probabilities)


def _alpha(options: CompressOptions, data: _Data) -> float:
    return label_weight(options, data.train)


def _train(
    model: Any,
    data: _Data,
    options: CompressOptions,
    epochs: int,
    console: Console | None,
    title: str,
) -> History:
    if epochs == 0:
        return History()
    spec = TrainingSpec(
        epochs=epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate or (3e-3 if options.method == "distill" else 1e-3),
        alpha=_alpha(options, data),
        temperature=options.temperature,
        schedule=schedule(options),
    )
    return fit(
        model,
        data.train.x,
        data.train.y,
        data.teacher_train,
        (data.val_x, data.val_y),
        spec,
        data.probabilities,
        console,
        title,
    )


def _prune(teacher: Any, chain: Chain, data: _Data, options: CompressOptions, epochs: int,
           base: float, console: Console | None) -> tuple[Any, dict[str, Any], History]:  # fmt: skip
    if options.ratio is not None:
        ratios: tuple[float, ...] = (options.ratio,)
    elif options.max_accuracy_drop is not None:
        ratios = PRUNE_RATIOS
    else:
        ratios = (0.5,)
    tried = []
    for ratio in ratios:
        pruned, changes = prune_chain(chain, ratio)
        model = build(pruned)
        history = _train(model, data, options, epochs, console, f"prune {ratio:.0%}")
        acc = accuracy(model, data.val_x, data.val_y)
        tried.append({"ratio": ratio, "accuracy": round(acc, 3)})
        if console is not None:
            console.print(f"  pruned {ratio:.0%} of each layer's filters: {acc:.2f}% held-out")
        bound = options.max_accuracy_drop
        if bound is None or base - acc <= bound or ratio == ratios[-1]:
            break
    details = {
        "ratio": ratio,
        "ratios_tried": tried,
        "layers": {k: {"before": a, "after": b} for k, (a, b) in changes.items()},
    }
    return model, details, history


def _distill(teacher: Any, chain: Chain, data: _Data, options: CompressOptions, epochs: int,
             base: float, console: Console | None) -> tuple[Any, dict[str, Any], History]:  # fmt: skip
    if options.student is not None:
        student = student_from_factory(options.student, teacher)
        what: dict[str, Any] = {"student": options.student}
    else:
        student = build(narrower(chain, options.width))
        what = {"width": options.width}
    history = _train(student, data, options, epochs, console, "distill")
    details = {**what, "temperature": options.temperature, "alpha": _alpha(options, data)}
    return student, details, history


def _lowrank(teacher: Any, chain: Chain, data: _Data, options: CompressOptions, epochs: int,
             base: float, console: Console | None) -> tuple[Any, dict[str, Any], History]:  # fmt: skip
    factored, layers = factorize_chain(chain, options.energy, options.rank)
    model = build(factored)
    if console is not None and not any(f.factorized for f in layers):
        console.print(
            "  [yellow]no Dense or 1x1 Conv2D layer gets smaller at this rank: the model "
            "is unchanged[/]"
        )
    if any(f.factorized for f in layers):
        history = _train(model, data, options, epochs, console, "low-rank")
    else:
        history = History()
    details = {"energy": options.energy, "rank": options.rank,
               "layers": [f.to_dict() for f in layers]}  # fmt: skip
    return model, details, history


def _cluster(teacher: Any, chain: Chain, data: _Data, options: CompressOptions, epochs: int,
             base: float, console: Console | None) -> tuple[Any, dict[str, Any], History]:  # fmt: skip
    clustered, layers = cluster_chain(chain, options.clusters, options.seed)
    history = History()
    if epochs > 0:
        # Fine-tune, then snap the kernels back onto their clusters.
        model = build(clustered)
        history = _train(model, data, options, epochs, console, "cluster")
        clustered, layers = cluster_chain(read_chain(model), options.clusters, options.seed)
    details = {"clusters": options.clusters, "layers": [c.to_dict() for c in layers]}
    return build(clustered), details, history


_METHOD_RUNNERS = {"prune": _prune, "distill": _distill, "lowrank": _lowrank, "cluster": _cluster}
