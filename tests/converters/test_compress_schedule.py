"""The learning-rate schedule of ``edgedl compress``: cosine decay by default, or constant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import run_edgedl

from edgedl.converters.compress import CompressOptions
from edgedl.converters.compress.options import schedule
from edgedl.converters.compress.training import TrainingSpec, fit
from edgedl.errors import UsageError

pytestmark = pytest.mark.slow  # imports TensorFlow


def _model() -> Any:
    from edgedl.converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
         keras.layers.Dense(3, activation="softmax")]
    )  # fmt: skip


@pytest.mark.parametrize(("name", "end"), [("constant", 0.01), ("cosine", 0.0)])
def test_the_rate_ends_where_its_schedule_says(name: str, end: float) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = _model()
    spec = TrainingSpec(epochs=3, batch_size=32, learning_rate=0.01, schedule=name)
    history = fit(model, x, y, None, (x, y), spec, True, None, "test")
    assert len(history.accuracy) == 3
    assert float(model.optimizer.learning_rate) == pytest.approx(end, abs=1e-6)


def test_every_method_decays_by_default_and_constant_is_kept_when_asked() -> None:
    def options(method: str, **given: str) -> CompressOptions:
        return CompressOptions(method=method, data=Path("t.npz"), validation=Path("v.npz"),
                               output=Path("o.keras"), **given)  # type: ignore[arg-type]  # fmt: skip

    methods = ("prune", "distill", "lowrank", "cluster")
    assert [schedule(options(m)) for m in methods] == ["cosine"] * 4
    assert schedule(options("prune", schedule="constant")) == "constant"
    with pytest.raises(UsageError, match="unknown --schedule 'linear'"):
        schedule(options("prune", schedule="linear"))


def test_an_unknown_schedule_is_one_line(tmp_path: Path) -> None:
    result = run_edgedl("compress", "m.keras", "--method", "distill", "--schedule", "linear",
                        "--data", "t.npz", "--validation", "v.npz",
                        "--output", tmp_path / "o.keras")  # fmt: skip
    assert result.code != 0 and "Traceback" not in result.stderr
    assert "'linear' is not one of 'cosine', 'constant'" in result.stderr
