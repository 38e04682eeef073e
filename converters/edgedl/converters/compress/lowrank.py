"""Low-rank factorization: a Dense or 1x1 Conv2D kernel W becomes two thinner layers.

W (inputs x outputs) is cut by truncated SVD to ``A @ B`` with A = U_r sqrt(S_r) and
B = sqrt(S_r) V_r^T: a first layer of ``r`` units (no bias, no activation) and the original
layer with A's outputs as inputs, keeping its name, bias and activation. ``r`` is the given
rank, or the smallest that keeps ``energy`` of the squared singular values. A layer is left
as it is when the two factors would hold as many parameters as W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import UsageError

from .chain import Chain, Link


@dataclass
class Factorization:
    """What happened to one layer: its shape, the rank chosen, whether it was split."""

    layer: str
    inputs: int
    outputs: int
    rank: int
    energy_kept: float
    factorized: bool

    def to_dict(self) -> dict[str, object]:
        """The fields as a plain dict for the compression report, ``energy_kept`` rounded to 4."""
        return {**self.__dict__, "energy_kept": round(self.energy_kept, 4)}


def choose_rank(singular: NDArray[np.float32], energy: float | None, rank: int | None) -> int:
    """``rank`` capped at the number of singular values, or the smallest keeping ``energy``."""
    if rank is not None:
        return max(1, min(rank, len(singular)))
    squared = singular.astype(np.float64) ** 2
    kept = np.cumsum(squared) / max(float(squared.sum()), 1e-30)
    return int(np.searchsorted(kept, (energy or 0.0) - 1e-9) + 1)


def _is_pointwise(link: Link) -> bool:
    cfg = link.config
    return (
        link.kind == "Conv2D"
        and tuple(cfg.get("kernel_size", ())) == (1, 1)
        and tuple(cfg.get("strides", (1, 1))) == (1, 1)
        and int(cfg.get("groups", 1)) == 1
        and tuple(cfg.get("dilation_rate", (1, 1))) == (1, 1)
    )


def factorize_chain(
    chain: Chain, energy: float | None = 0.9, rank: int | None = None
) -> tuple[Chain, list[Factorization]]:
    """The chain with every Dense and 1x1 Conv2D layer split where that saves parameters."""
    if rank is None and (energy is None or not 0.0 < energy <= 1.0):
        raise UsageError(f"--energy must be in (0, 1], not {energy}")
    if rank is not None and rank < 1:
        raise UsageError(f"--rank must be at least 1, not {rank}")
    links: list[Link] = []
    report: list[Factorization] = []
    for link in chain.links:
        if not (link.kind == "Dense" or _is_pointwise(link)) or not link.weights:
            links.append(link)
            continue
        kernel, *bias = link.weights
        w = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
        n_in, n_out = w.shape
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        r = choose_rank(s, energy, rank)
        kept = float((s[:r] ** 2).sum() / max((s**2).sum(), 1e-30))
        worth_it = r * (n_in + n_out) < n_in * n_out
        report.append(Factorization(link.name, n_in, n_out, r, kept, worth_it))
        if not worth_it:
            links.append(link)
            continue
        root = np.sqrt(s[:r])
        a = (u[:, :r] * root).astype(np.float32)
        b = (root[:, None] * vt[:r]).astype(np.float32)
        lead = kernel.shape[:-2]  # (1, 1) for a pointwise convolution, () for Dense
        size_key = "units" if link.kind == "Dense" else "filters"
        first = link.with_config(
            name=f"{link.name}_lowrank",
            use_bias=False,
            activation="linear",
            kernel_regularizer=None,
            bias_regularizer=None,
            activity_regularizer=None,
            **{size_key: r},
        )
        first.weights = [a.reshape(*lead, n_in, r)]
        links.append(first)
        links.append(Link(link.cls, link.config, [b.reshape(*lead, r, n_out), *bias]))
    out = chain.copy()
    out.links = links
    return out, report
