"""The rebuilds under ``edgedl compress``, on small Keras models with chosen weights.

No training: what is removed or factorized is chosen so the right answer is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgedl.errors import ModelError

pytestmark = pytest.mark.slow  # imports TensorFlow


def _model() -> Any:
    from edgedl.converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2), name="image"),
            keras.layers.Conv2D(8, 3, padding="same", name="conv"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(6, activation="relu", name="hidden"),
            keras.layers.Dense(3, activation="softmax", name="probs"),
        ]
    )


def test_pruning_filters_that_contribute_nothing_keeps_the_outputs() -> None:
    from edgedl.converters.compress.chain import build, read_chain
    from edgedl.converters.compress.prune import prune_chain

    model = _model()
    dead_filters, dead_units = [1, 4, 6, 7], [0, 2, 5]
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., dead_filters], bias[dead_filters] = 0.0, 0.0
    model.get_layer("conv").set_weights([kernel, bias])
    gamma, beta, mean, var = model.get_layer("bn").get_weights()
    rng = np.random.default_rng(0)
    gamma, mean, var = rng.uniform(0.5, 2, 8), rng.normal(0, 0.1, 8), rng.uniform(0.5, 2, 8)
    beta = rng.normal(0, 0.1, 8)
    beta[dead_filters], mean[dead_filters] = 0.0, 0.0  # a dead filter stays 0 after BN
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    w, b = model.get_layer("hidden").get_weights()
    w[:, dead_units], b[dead_units] = 0.0, 0.0
    model.get_layer("hidden").set_weights([w, b])

    pruned_chain, changes = prune_chain(read_chain(model), 0.5)
    pruned = build(pruned_chain)
    assert changes == {"conv": (8, 4), "hidden": (6, 3)}
    # Flatten's 3x3x4 survivors fed the Dense layer: the right rows were kept.
    assert pruned.get_layer("hidden").get_weights()[0].shape == (36, 3)
    x = np.random.default_rng(1).normal(size=(16, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert pruned.count_params() < model.count_params() / 2
    assert pruned.output_shape == model.output_shape and pruned.layers[-1].name == "probs"


def test_low_rank_at_full_energy_keeps_the_outputs_and_a_rank_cut_shrinks_the_layer() -> None:
    from edgedl.converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    from edgedl.converters.compress.chain import build, read_chain
    from edgedl.converters.compress.lowrank import factorize_chain

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((64,), name="x"),
                              keras.layers.Dense(48, activation="relu", name="wide"),
                              keras.layers.Dense(4, name="out")])  # fmt: skip
    u = np.random.default_rng(0).normal(size=(64, 5))
    v = np.random.default_rng(1).normal(size=(5, 48))
    _, b = model.get_layer("wide").get_weights()
    model.get_layer("wide").set_weights([(u @ v).astype(np.float32) * 0.05, b])  # rank 5
    x = np.random.default_rng(3).normal(size=(32, 64)).astype(np.float32)

    chain, report = factorize_chain(read_chain(model), energy=1.0)
    factored = build(chain)
    assert report[0].factorized and report[0].rank == 5  # the kernel's true rank
    assert factored.get_layer("wide_lowrank").get_weights()[0].shape == (64, 5)
    np.testing.assert_allclose(factored.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    assert factored.count_params() < model.count_params()


def test_a_model_with_a_skip_connection_is_refused_by_name() -> None:
    from edgedl.converters._tf import import_tensorflow

    import_tensorflow()
    import keras

    from edgedl.converters.compress.chain import read_chain

    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(8, name="inner")(inputs)
    added = keras.layers.Add(name="skip")([inputs, hidden])
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(added))
    with pytest.raises(ModelError, match="layer 'skip' does not simply follow 'inner'"):
        read_chain(model)


def test_pytorch_pruning_of_dead_filters_keeps_the_outputs_through_a_channel_first_flatten() -> (
    None
):
    torch = pytest.importorskip("torch", reason="PyTorch sources need the edgedl[torch] extra")
    from torch import nn

    from edgedl.converters.compress import torch_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 3 * 3, 6), nn.ReLU(),
                          nn.Linear(6, 3)).eval()  # fmt: skip
    dead_filters, dead_units = [1, 4, 6, 7], [0, 2, 5]
    with torch.no_grad():
        model[0].weight[dead_filters] = 0.0
        model[0].bias[dead_filters] = 0.0
        model[1].running_mean.normal_(0, 0.1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].bias.normal_(0, 0.1)
        model[1].bias[dead_filters] = 0.0
        model[1].running_mean[dead_filters] = 0.0
        model[5].weight[dead_units] = 0.0
        model[5].bias[dead_units] = 0.0
    x = torch.randn(16, 2, 6, 6)
    pruned, changes = torch_model.prune(model, 0.5, x)
    assert changes == {"0": (8, 4), "5": (6, 3)}
    assert pruned[5].weight.shape == (3, 4 * 3 * 3)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-6)
