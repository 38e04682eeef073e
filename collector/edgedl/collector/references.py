"""Reference profiles: where the collector gets what "no drift" looks like.

A window names its model by name, version and sha256; the reference profile is in that
bundle's manifest. Operators register manifests with the collector (``--reference
BUNDLE_OR_MANIFEST`` at start, or ``POST /api/v1/references`` with a manifest.json); they are
stored in the ``model_references`` table, keyed by sha256 and looked up by sha256 first, then
by (model, version).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from edgedl.bundle import MANIFEST_FILE, Bundle, Manifest
from edgedl.calibration import Calibration
from edgedl.errors import BundleError, DataError
from edgedl.profile import Profile

from . import drift, significance
from .store import Store


@dataclass
class ReferenceModel:
    """A reference profile laid out for fast comparison: one row per statistic.

    ``counts``, ``positions`` and ``mask`` are ``(S, B)`` matrices (rows padded to the widest
    statistic); ``edges`` keeps each statistic's own edges to check a window's histograms.
    """

    name: str
    version: str
    sha256: str
    stats: list[str]
    edges: list[tuple[float, ...]]
    counts: NDArray[np.float64]
    positions: NDArray[np.float64]
    mask: NDArray[np.bool_]
    std: NDArray[np.float64]
    mean: NDArray[np.float64]
    class_counts: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    samples: int = 0
    calibration: Calibration | None = None  # for accuracy estimates (edgedl.calibration)

    @property
    def edge_lists(self) -> list[list[float]]:
        """Each statistic's edges as a list (what a decoded window holds), for quick checks."""
        return self._edge_lists

    def __post_init__(self) -> None:
        self._edge_lists = [list(e) for e in self.edges]
        self._null: significance.BridgeNull | None = None

    @property
    def null(self) -> significance.BridgeNull:
        """Null distributions of binned KS and Wasserstein on these bins (drawn on first use)."""
        if self._null is None:
            self._null = significance.BridgeNull(self.counts, self.positions, self.std)
        return self._null

    @property
    def width(self) -> int:
        """Columns of the count matrices."""
        return int(self.counts.shape[1]) if self.counts.ndim == 2 else 0

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ReferenceModel:
        """Prepare a manifest's reference profile; :class:`DataError` when it has none."""
        profile = manifest.reference_profile()
        if profile is None:
            raise DataError(
                f"{manifest.name} {manifest.version}: the manifest has no reference profile "
                "(the bundle was converted without data)"
            )
        reference = cls.from_profile(manifest.name, manifest.version, manifest.sha256, profile)
        if manifest.calibration is not None:
            reference.calibration = Calibration.from_dict(manifest.calibration)
        return reference

    @classmethod
    def from_profile(cls, name: str, version: str, sha256: str, profile: Profile) -> ReferenceModel:
        """Lay out a reference profile for comparison."""
        stats = sorted(profile.histograms)
        hists = [profile.histograms[s] for s in stats]
        if hists:
            width = max(h.counts.size for h in hists)
            counts = drift.pad_counts([h.counts for h in hists], width)
            positions, mask = drift.stack([drift.bin_positions(h.edges) for h in hists])
        else:
            counts = positions = np.zeros((0, 0))
            mask = np.zeros((0, 0), dtype=bool)
        return cls(
            name=name,
            version=version,
            sha256=sha256,
            stats=stats,
            edges=[tuple(float(e) for e in h.edges) for h in hists],
            counts=counts,
            positions=positions,
            mask=mask,
            std=np.array([h.std if h.count else 0.0 for h in hists], dtype=np.float64),
            mean=np.array([h.mean if h.count else np.nan for h in hists], dtype=np.float64),
            class_counts={k: v.astype(np.float64) for k, v in profile.class_counts.items()},
            samples=profile.samples,
        )


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of a bundle directory, a bundle ``.tar``, or a ``manifest.json`` file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        try:
            return Manifest.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{p}: not a readable manifest ({exc})") from exc
        except ValidationError as exc:
            raise BundleError(f"{p}: not a valid manifest ({_first_error(exc)})") from exc
    if p.is_dir() and not (p / MANIFEST_FILE).is_file():
        raise BundleError(f"{p}: no {MANIFEST_FILE} here")
    return Bundle.open(p, verify=False).manifest


def parse_manifest(data: Any) -> Manifest:
    """Validate a manifest posted as JSON; :class:`BundleError` says what is wrong."""
    if not isinstance(data, dict):
        raise BundleError("a manifest must be a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"not a valid manifest ({_first_error(exc)})") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['msg']}"


class ReferenceBook:
    """Registered references, cached in memory, persisted in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._by_sha: dict[str, ReferenceModel | None] = {}

    def register(self, manifest: Manifest) -> ReferenceModel:
        """Store a manifest and make its profile the reference of its model version."""
        reference = ReferenceModel.from_manifest(manifest)
        self._store.add_reference(
            manifest.sha256, manifest.name, manifest.version, manifest.model_dump(mode="json")
        )
        with self._lock:
            # Forget misses too: windows that found no reference may find this one now.
            self._by_sha = {k: v for k, v in self._by_sha.items() if v is not None}
            self._by_sha[manifest.sha256] = reference
        return reference

    def register_path(self, path: str | Path) -> ReferenceModel:
        """Register the manifest of a bundle directory, ``.tar`` or ``manifest.json``."""
        return self.register(read_manifest(path))

    def find(self, name: str, version: str, sha256: str) -> ReferenceModel | None:
        """The reference for a model version (by sha256, else by name and version), or None."""
        with self._lock:
            if sha256 in self._by_sha:
                return self._by_sha[sha256]
        data = self._store.reference(sha256, name, version)
        reference: ReferenceModel | None = None
        if data is not None:
            try:
                reference = ReferenceModel.from_manifest(Manifest.model_validate(data))
            except (ValidationError, DataError):
                reference = None
        with self._lock:
            self._by_sha[sha256] = reference
        return reference

    def list(self) -> list[dict[str, Any]]:
        """The stored references (without their manifests)."""
        return [
            {
                "sha256": r["sha256"],
                "model": r["model"],
                "version": r["version"],
                "added_at": r["added_at"],
            }
            for r in self._store.references()
        ]
