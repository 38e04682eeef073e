"""Samples for retraining in the collector: stored as they arrive, exported as a dataset.

Devices with ``[sampling]`` on publish :class:`~edgedl.samples.SampleMessage` and
:class:`~edgedl.samples.SampleLabel` messages on ``edgedl/v1/{fleet}/{device}/samples``.
:func:`store_samples` keeps them in the ``samples`` and ``sample_labels`` tables (a message
delivered twice is stored once: the sample id is the key). :func:`export_samples` reads back
the samples a filter selects, as a :class:`SampleSet` that :meth:`SampleSet.save` writes as
the ``.npz`` that ``edgedl convert --calibration/--validation`` and a training script read:

* ``x``: the inputs, one row per sample (the samples' only input, or the one named);
* ``y``: the true labels, present only when every exported sample has one
  (``--labelled`` exports only those); ``label`` holds them all with -1 for unknown;
* metadata, one entry per sample: ``sample_id``, ``fleet``, ``device``, ``model``,
  ``version``, ``time``, ``reason``, ``predicted`` (-1: none), ``confidence`` (NaN: none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select

from edgedl.errors import DataError
from edgedl.samples import SampleLabel, SampleMessage, SampleTensor

from .schema import sample_labels, samples
from .store import Store

#: The metadata arrays of an exported dataset, besides ``x``, ``y`` and ``label``.
METADATA = ("sample_id", "fleet", "device", "model", "version", "time", "reason", "predicted",
            "confidence")  # fmt: skip


def store_samples(
    store: Store, received: Sequence[tuple[SampleMessage | SampleLabel, float]]
) -> int:
    """Store samples and labels (each with its arrival time) in one transaction; how many
    samples were new. A sample or label already stored is left as it is."""
    rows = [_row(m, at) for m, at in received if isinstance(m, SampleMessage)]
    labels = [
        {"sample_id": m.id, "label": m.label, "received_at": at}
        for m, at in received
        if isinstance(m, SampleLabel)
    ]
    new = 0
    with store.engine.begin() as conn:
        if rows:
            stmt = (
                store.insert(samples)
                .on_conflict_do_nothing(index_elements=["sample_id"])
                .returning(samples.c.sample_id)
            )
            new = len(conn.execute(stmt, rows).all())
        if labels:
            stmt = store.insert(sample_labels).on_conflict_do_nothing(index_elements=["sample_id"])
            conn.execute(stmt, labels)
    return new


def _row(m: SampleMessage, received_at: float) -> dict[str, Any]:
    inputs = json.dumps({k: v.model_dump() for k, v in m.inputs.items()}).encode()
    return {
        "sample_id": m.id, "fleet": m.fleet, "device": m.device, "model": m.model,
        "version": m.version, "time": m.time, "reason": m.reason,
        "prediction_id": m.prediction_id, "batch_index": m.index, "predicted": m.predicted,
        "confidence": m.confidence, "inputs": inputs, "received_at": received_at,
    }  # fmt: skip


@dataclass
class SampleSet:
    """Exported samples: inputs, labels (-1: unknown) and metadata, one entry per sample."""

    x: NDArray[Any]
    label: NDArray[np.int64]
    metadata: dict[str, NDArray[Any]]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def labelled(self) -> int:
        """How many samples have their true label."""
        return int((self.label >= 0).sum())

    def save(self, path: str | Path) -> Path:
        """Write the ``.npz`` (``y`` only when every sample is labelled)."""
        out = Path(path)
        arrays: dict[str, NDArray[Any]] = {"x": self.x, "label": self.label, **self.metadata}
        if len(self) and self.labelled == len(self):
            arrays["y"] = self.label
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("wb") as f:
                np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        except OSError as exc:
            raise DataError(f"cannot write {out}: {exc.strerror or exc}") from exc
        return out


def export_samples(
    store: Store,
    fleet: str | None = None,
    device: str | None = None,
    since: float | None = None,
    reason: str | None = None,
    labelled_only: bool = False,
    input_name: str | None = None,
) -> SampleSet:
    """The stored samples the filters select, oldest first; :class:`DataError` when none
    does, or when they do not share one input shape (narrow the filters, or name the input).
    """
    query = select(samples, sample_labels.c.label).outerjoin(
        sample_labels, samples.c.sample_id == sample_labels.c.sample_id
    )
    wanted = {"fleet": fleet, "device": device, "reason": reason}
    for column, value in wanted.items():
        if value is not None:
            query = query.where(samples.c[column] == value)
    if since is not None:
        query = query.where(samples.c.time >= since)
    if labelled_only:
        query = query.where(sample_labels.c.label.is_not(None))
    query = query.order_by(samples.c.time, samples.c.sample_id)
    with store.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    if not rows:
        shown = {k: v for k, v in {**wanted, "since": since}.items() if v is not None}
        what = ", ".join(f"{k} {v}" for k, v in shown.items()) or "any filter"
        extra = " with a label" if labelled_only else ""
        raise DataError(f"no stored samples{extra} match {what}")
    xs = []
    for row in rows:
        inputs = json.loads(row["inputs"])
        name = input_name or (next(iter(inputs)) if len(inputs) == 1 else None)
        if name is None or name not in inputs:
            raise DataError(
                f"sample {row['sample_id']} has inputs {', '.join(sorted(inputs))}: "
                "name the one to export (--input)"
            )
        xs.append(SampleTensor.model_validate(inputs[name]).array())
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise DataError(
            f"the samples have inputs of {len(shapes)} shapes ({', '.join(map(str, shapes))}): "
            "narrow the export (--device, --since) to one model"
        )
    meta: dict[str, NDArray[Any]] = {
        "sample_id": np.array([r["sample_id"] for r in rows]),
        "fleet": np.array([r["fleet"] for r in rows]),
        "device": np.array([r["device"] for r in rows]),
        "model": np.array([r["model"] for r in rows]),
        "version": np.array([r["version"] for r in rows]),
        "time": np.array([r["time"] for r in rows], dtype=np.float64),
        "reason": np.array([r["reason"] for r in rows]),
        "predicted": np.array(
            [-1 if r["predicted"] is None else r["predicted"] for r in rows], dtype=np.int64
        ),
        "confidence": np.array(
            [np.nan if r["confidence"] is None else r["confidence"] for r in rows],
            dtype=np.float64,
        ),
    }
    label = np.array([-1 if r["label"] is None else r["label"] for r in rows], dtype=np.int64)
    return SampleSet(x=np.stack(xs), label=label, metadata=meta)


__all__ = ["METADATA", "SampleSet", "export_samples", "store_samples"]
