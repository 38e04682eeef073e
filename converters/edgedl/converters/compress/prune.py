"""Structured pruning: whole Conv2D filters and Dense units removed, by their L1 norm.

For each Conv2D and Dense layer but the output layer, the filters (units) with the smallest
L1 norm of their weights are dropped, ``ratio`` of them per layer; the layers after it lose
the matching input channels (BatchNormalization its statistics, Flatten the matching
positions, the next Conv2D or Dense the matching kernel rows). The result is a smaller dense
model, not a sparse one: every runtime runs fewer multiply-adds.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import ModelError

from .chain import Chain, Link

# Layers that act on each channel alone: their output channels are their input channels.
CHANNELWISE = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "Dropout", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "MaxPooling2D", "AveragePooling2D", "MaxPooling1D",
    "AveragePooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalAveragePooling1D", "ZeroPadding2D", "Cropping2D", "UpSampling2D", "Rescaling",
    "Identity",
}  # fmt: skip
_BN_WEIGHTS = 4  # gamma, beta, moving mean, moving variance (with scale and center on)


def l1_keep(kernel: NDArray[np.float32], ratio: float) -> NDArray[np.int64]:
    """Indices (sorted) of the output channels to keep: the largest L1 norms, 1 at least."""
    out = kernel.shape[-1]
    norms = np.abs(kernel.reshape(-1, out)).sum(axis=0)
    n_keep = max(1, out - math.floor(out * ratio))
    return np.sort(np.argsort(-norms, kind="stable")[:n_keep]).astype(np.int64)


def prune_chain(chain: Chain, ratio: float) -> tuple[Chain, dict[str, tuple[int, int]]]:
    """The chain with ``ratio`` of each hidden Conv2D/Dense layer's outputs removed.

    Returns the new chain (weights copied from the surviving channels) and, per pruned
    layer, its (before, after) output channel count.
    """
    if not 0.0 <= ratio < 1.0:
        raise ModelError(f"the pruning ratio must be in [0, 1), not {ratio}")
    weighted = [i for i, link in enumerate(chain.links) if link.kind in ("Conv2D", "Dense")]
    if not weighted:
        raise ModelError("the model has no Conv2D or Dense layer to prune")
    output_layer = weighted[-1]
    keep: NDArray[np.int64] | None = None  # channels of the running tensor that survive
    links: list[Link] = []
    changes: dict[str, tuple[int, int]] = {}
    for i, link in enumerate(chain.links):
        w = link.weights or []
        if link.kind in ("Conv2D", "Dense"):
            kernel = w[0] if keep is None else np.take(w[0], keep, axis=-2)
            bias = w[1:]
            out_keep = None if i == output_layer else l1_keep(kernel, ratio)
            if out_keep is not None:
                kernel = np.take(kernel, out_keep, axis=-1)
                bias = [np.take(b, out_keep) for b in bias]
                key = "filters" if link.kind == "Conv2D" else "units"
                changes[link.name] = (int(link.config[key]), len(out_keep))
                link = link.with_config(**{key: len(out_keep)})
            links.append(Link(link.cls, link.config, [kernel, *bias], link.input_shape))
            keep = out_keep
        elif keep is None:
            links.append(link)
        elif link.kind == "BatchNormalization":
            if len(w) != _BN_WEIGHTS:
                raise ModelError(f"{link.name}: BatchNormalization without scale or center")
            links.append(Link(link.cls, link.config, [np.take(v, keep) for v in w]))
        elif link.kind == "Flatten":
            spatial = int(np.prod([d or 1 for d in link.input_shape[:-1]]))
            channels = int(link.input_shape[-1] or 0)
            keep = (np.arange(spatial)[:, None] * channels + keep[None, :]).reshape(-1)
            links.append(link)
        elif link.kind in CHANNELWISE:
            if w:
                raise ModelError(f"{link.name}: a {link.kind} layer with weights cannot be pruned")
            links.append(link)
        else:
            raise ModelError(
                f"cannot prune through layer {link.name!r} ({link.kind}): structured pruning "
                "handles Conv2D, Dense, BatchNormalization, Flatten, pooling, activations "
                "and dropout"
            )
    out = chain.copy()
    out.links = links
    return out, changes
