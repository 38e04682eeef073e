"""A Keras model as a chain of layers that can be rebuilt with other sizes or layers.

Every compression method edits a model layer by layer: fewer filters here, two Dense layers
for one there. :class:`Chain` reads a Sequential model, or a functional model whose layers
form one path from input to output, into :class:`Link` values (a layer's class, config and
weights); :func:`build` makes a new model from edited links with Keras's functional API.
Layer names are kept, so the output tensor keeps its name in the SavedModel signature that
``edgedl convert`` exports.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import ModelError

Weights = list[NDArray[np.float32]]


@dataclass
class Link:
    """One layer of a chain: its class, its config and its weights (``None``: initialise)."""

    cls: type[Any]
    config: dict[str, Any]
    weights: Weights | None
    input_shape: tuple[int | None, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """The Keras class name (``Conv2D``, ``Dense``, ...)."""
        return self.cls.__name__

    @property
    def name(self) -> str:
        """The layer's name from its config, kept when the chain is rebuilt."""
        return str(self.config["name"])

    def with_config(self, **changes: Any) -> Link:
        """A copy with config keys changed and no weights."""
        return Link(self.cls, {**copy.deepcopy(self.config), **changes}, None, self.input_shape)


@dataclass
class Chain:
    """A model's input (name and per-sample shape) and its layers in order."""

    input_name: str
    input_shape: tuple[int, ...]
    links: list[Link]
    name: str

    def copy(self) -> Chain:
        """A copy with its own list of links (the links themselves are shared)."""
        return Chain(self.input_name, self.input_shape, list(self.links), self.name)


def read_chain(model: Any) -> Chain:
    """The layers of ``model`` from input to output; :class:`ModelError` if they branch."""
    import keras

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            "edgedl compress takes models with one input and one output; this one has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not isinstance(model, keras.Sequential):
        for prev, layer in itertools.pairwise(layers):
            inbound = layer._inbound_nodes[0].parent_nodes if layer._inbound_nodes else []
            if len(inbound) != 1 or inbound[0].operation is not prev:
                raise ModelError(
                    f"layer {layer.name!r} does not simply follow {prev.name!r}: edgedl "
                    "compress rebuilds models whose layers form one chain (no branches or "
                    "skip connections)"
                )
    links = [
        Link(
            type(layer),
            layer.get_config(),
            [np.asarray(w) for w in layer.get_weights()],
            tuple(layer.input.shape[1:]),
        )
        for layer in layers
    ]
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    input_name = model.inputs[0].name
    if (
        isinstance(model, keras.Sequential)
        and model._layers
        and isinstance(model._layers[0], keras.layers.InputLayer)
    ):
        input_name = model._layers[0].name
    return Chain(input_name, shape, links, model.name)


def build(chain: Chain) -> Any:
    """A functional Keras model from ``chain``, with each link's weights set where given."""
    import keras

    inputs = keras.Input(chain.input_shape, name=chain.input_name)
    x = inputs
    made = []
    for link in chain.links:
        layer = link.cls.from_config(copy.deepcopy(link.config))
        x = layer(x)
        made.append((layer, link))
    model = keras.Model(inputs, x, name=chain.name)
    for layer, link in made:
        if link.weights is not None:
            layer.set_weights(link.weights)
    return model


def is_softmax_output(link: Link) -> bool:
    """Whether the last layer ends in a softmax (its outputs are probabilities)."""
    return link.kind == "Softmax" or link.config.get("activation") == "softmax"


def parametric(chain: Chain) -> list[int]:
    """Indices of the Conv2D and Dense layers, the ones compression shrinks."""
    return [i for i, link in enumerate(chain.links) if link.kind in ("Conv2D", "Dense")]
