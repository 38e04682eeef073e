"""Weight clustering: each Conv2D / Dense kernel keeps only ``k`` distinct values.

The values of a kernel are grouped by one-dimensional k-means (scikit-learn's ``KMeans``,
seeded) and each weight is replaced by its cluster's centre. The model has as many
parameters as before and runs as fast; what shrinks is the information in it, which a
compressor (zip, or a format that stores a palette) can exploit. A float or int8 file does
not get smaller by itself: the gain shows in the compressed size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import UsageError

from .chain import Chain, Link


@dataclass
class Clustering:
    """One clustered kernel: its layer, how many weights, and how many distinct values."""

    layer: str
    weights: int
    clusters: int

    def to_dict(self) -> dict[str, object]:
        """The fields as a plain dict, for the ``layers`` list of the compression report."""
        return dict(self.__dict__)


def cluster_values(values: NDArray[np.float32], k: int, seed: int) -> NDArray[np.float32]:
    """``values`` with each replaced by the centre of its k-means cluster."""
    from sklearn.cluster import KMeans

    flat = values.reshape(-1, 1).astype(np.float64)
    k = min(k, len(np.unique(flat)))
    # Linear initialisation over the value range keeps the rare large weights represented.
    init = np.linspace(flat.min(), flat.max(), k).reshape(-1, 1)
    km = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed, max_iter=100).fit(flat)
    centres = km.cluster_centers_.reshape(-1)
    out: NDArray[np.float32] = centres[km.labels_].reshape(values.shape).astype(np.float32)
    return out


def cluster_chain(chain: Chain, clusters: int, seed: int = 0) -> tuple[Chain, list[Clustering]]:
    """The chain with every Conv2D / Dense kernel clustered to ``clusters`` values."""
    if not 2 <= clusters <= 256:
        raise UsageError(f"--clusters must be between 2 and 256, not {clusters}")
    links: list[Link] = []
    report: list[Clustering] = []
    for link in chain.links:
        if link.kind not in ("Conv2D", "Dense") or not link.weights:
            links.append(link)
            continue
        kernel, *rest = link.weights
        clustered = cluster_values(kernel, clusters, seed)
        report.append(Clustering(link.name, int(kernel.size), len(np.unique(clustered))))
        links.append(Link(link.cls, link.config, [clustered, *rest], link.input_shape))
    out = chain.copy()
    out.links = links
    return out, report
