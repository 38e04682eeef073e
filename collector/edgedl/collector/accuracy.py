"""Real accuracy from late labels: confusion-matrix cells stored per window, metrics from sums.

Devices send, per model version and window, the confusion matrix of the labels they matched
(``models[].labels.confusion``: ``[actual, predicted, count]``). The store keeps one row per
cell (table ``label_confusion``); :func:`confusion` sums the cells of any span (device,
model version, fleet, time), and :func:`classification_metrics` turns a matrix into accuracy
and macro precision, recall and F1, the way scikit-learn's ``precision_recall_fscore_support``
with ``average="macro"`` and ``zero_division=0`` computes them over the classes that occur
(as an actual label or a prediction). Only labelled predictions count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Table, func, select

from .batch import StoredWindow
from .estimates import estimated, estimated_series
from .schema import label_confusion

if TYPE_CHECKING:
    from .store import Store

Cell = tuple[int, int, int]  # actual, predicted, count


def confusion_rows(stored: Sequence[StoredWindow]) -> list[dict[str, Any]]:
    """The ``label_confusion`` rows of newly stored windows (their ids set)."""
    rows: list[dict[str, Any]] = []
    for item in stored:
        w = item.window
        for m in w.models:
            if m.labels is None:
                continue
            for actual, predicted, count in m.labels.confusion:
                rows.append(
                    {
                        "window_id": item.id,
                        "fleet": w.fleet,
                        "device": w.device,
                        "model": m.name,
                        "version": m.version,
                        "window_end": w.window_end,
                        "actual": actual,
                        "predicted": predicted,
                        "count": count,
                    }
                )
    return rows


def classification_metrics(cells: Iterable[Cell]) -> dict[str, Any]:
    """``labelled``, ``correct``, ``accuracy`` and macro ``precision``, ``recall``, ``f1``.

    The rates are None when nothing is labelled.
    """
    total = correct = 0
    actual_n: dict[int, int] = {}
    predicted_n: dict[int, int] = {}
    hits: dict[int, int] = {}
    for a, p, c in cells:
        total += c
        actual_n[a] = actual_n.get(a, 0) + c
        predicted_n[p] = predicted_n.get(p, 0) + c
        if a == p:
            correct += c
            hits[a] = hits.get(a, 0) + c
    if not total:
        return {
            "labelled": 0,
            "correct": 0,
            "accuracy": None,
            "precision": None,
            "recall": None,
            "f1": None,
        }
    classes = sorted(set(actual_n) | set(predicted_n))
    precisions, recalls, f1s = [], [], []
    for k in classes:
        tp = hits.get(k, 0)
        prec = tp / predicted_n[k] if predicted_n.get(k) else 0.0
        rec = tp / actual_n[k] if actual_n.get(k) else 0.0
        precisions.append(prec)
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    n = len(classes)
    return {
        "labelled": total,
        "correct": correct,
        "accuracy": correct / total,
        "precision": sum(precisions) / n,
        "recall": sum(recalls) / n,
        "f1": sum(f1s) / n,
    }


@dataclass(frozen=True)
class LabelScope:
    """Which labelled predictions count: any field left None matches all."""

    fleet: str | None = None
    device: str | None = None
    model: str | None = None
    version: str | None = None
    since: float | None = None  # window_end >= since
    until: float | None = None  # window_end < until

    def conditions(self, table: Table = label_confusion) -> list[Any]:
        """The WHERE clauses of this scope on ``table`` (``label_confusion`` by default)."""
        t = table.c
        out: list[Any] = [
            t[name] == value
            for name, value in (
                ("fleet", self.fleet),
                ("device", self.device),
                ("model", self.model),
                ("version", self.version),
            )
            if value is not None
        ]
        if self.since is not None:
            out.append(t.window_end >= self.since)
        if self.until is not None:
            out.append(t.window_end < self.until)
        return out


def confusion(
    store: Store, scope: LabelScope, group_by: Sequence[str] = ()
) -> dict[tuple[Any, ...], list[Cell]]:
    """Summed confusion cells in ``scope``, per value of the ``group_by`` columns (``fleet``,
    ``device``, ``model``, ``version``); one group ``()`` when none."""
    t = label_confusion.c
    keys = [t[name] for name in group_by]
    q = select(*keys, t.actual, t.predicted, func.sum(t["count"]))
    q = q.where(*scope.conditions()).group_by(*keys, t.actual, t.predicted)
    out: dict[tuple[Any, ...], list[Cell]] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(q):
            key = tuple(row[: len(keys)])
            out.setdefault(key, []).append((int(row[-3]), int(row[-2]), int(row[-1])))
    return out


def accuracy_report(
    store: Store, scope: LabelScope, bucket_s: float | None = None
) -> dict[str, Any]:
    """Real accuracy of the labelled predictions in ``scope`` and the accuracy estimated from
    confidences (``estimated``, None without a calibrated reference): overall, per model
    version, per device, and real accuracy over time in buckets of ``bucket_s`` seconds."""

    def merged(group_by: tuple[str, ...]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        real = confusion(store, scope, group_by)
        guessed = estimated(store, scope, group_by)
        return [
            (
                key,
                {
                    **classification_metrics(real.get(key, [])),
                    "estimated": guessed[key].to_dict() if key in guessed else None,
                },
            )
            for key in sorted(set(real) | set(guessed))
        ]

    overall = dict(merged(()))
    empty = {**classification_metrics([]), "estimated": None}
    return {
        "overall": overall.get((), empty),
        "by_version": [
            {"model": k[0], "version": k[1], **m} for k, m in merged(("model", "version"))
        ],
        "by_device": [{"fleet": k[0], "device": k[1], **m} for k, m in merged(("fleet", "device"))],
        "series": _series(store, scope, bucket_s) if bucket_s and bucket_s > 0 else [],
    }


def _series(store: Store, scope: LabelScope, bucket_s: float) -> list[dict[str, Any]]:
    """Real and estimated accuracy per bucket of ``bucket_s`` seconds of ``window_end``."""
    t = label_confusion.c
    bucket = func.floor(t.window_end / bucket_s)
    q = select(bucket, t.actual, t.predicted, func.sum(t["count"]))
    q = q.where(*scope.conditions()).group_by(bucket, t.actual, t.predicted)
    buckets: dict[int, list[Cell]] = {}
    with store.engine.connect() as conn:
        for b, a, p, c in conn.execute(q):
            buckets.setdefault(int(b), []).append((int(a), int(p), int(c)))
    guessed = estimated_series(store, scope, bucket_s)
    return [
        {
            "start": b * bucket_s,
            "end": (b + 1) * bucket_s,
            **classification_metrics(buckets.get(b, [])),
            "estimated": guessed[b].to_dict() if b in guessed else None,
        }
        for b in sorted(set(buckets) | set(guessed))
    ]


__all__ = ["LabelScope", "accuracy_report", "classification_metrics", "confusion", "confusion_rows"]
