"""Accuracy estimated without labels, per window: rows of ``accuracy_estimates`` and their sums.

For every stored window whose model version has a calibrated reference (a bundle converted
with labelled validation data, ``manifest.calibration``), :func:`estimate_rows` applies the
calibration (:class:`edgedl.calibration.Calibration`) to the window's top-1 confidence
histogram; :func:`estimated` sums the rows of any span, which is exact (expected correct
predictions and variances add up).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from edgedl.calibration import Estimate
from edgedl.errors import DataError

from .batch import StoredWindow
from .schema import accuracy_estimates

if TYPE_CHECKING:
    from .accuracy import LabelScope
    from .references import ReferenceBook
    from .store import Store

log = logging.getLogger(__name__)
_warned: set[tuple[str, str, str]] = set()


def _skipped(model: str, version: str, why: str) -> None:
    """Say once per model version and reason why its windows get no estimate."""
    if (model, version, why) not in _warned:
        _warned.add((model, version, why))
        log.warning("no accuracy estimate for %s %s: %s", model, version, why)


def estimate_rows(
    stored: Sequence[StoredWindow], references: ReferenceBook
) -> list[dict[str, Any]]:
    """The ``accuracy_estimates`` rows of newly stored windows (their ids set)."""
    rows: list[dict[str, Any]] = []
    for item in stored:
        w = item.window
        for m in w.models:
            if m.profile is None:
                continue
            reference = references.find(m.name, m.version, m.sha256)
            calibration = reference.calibration if reference is not None else None
            if calibration is None:
                continue
            hist = m.profile.histograms.get(calibration.statistic)
            if hist is None or not hist.count:
                continue  # no top-1 histogram or no predictions in this window: nothing to estimate
            if tuple(hist.edges) != calibration.edges:
                _skipped(m.name, m.version, f"its windows' {calibration.statistic} bins differ "
                         "from the calibration's")  # fmt: skip
                continue
            try:
                guess = calibration.estimate(hist.counts)
            except DataError as exc:
                _skipped(m.name, m.version, str(exc))
                continue
            rows.append(
                {
                    "window_id": item.id,
                    "fleet": w.fleet,
                    "device": w.device,
                    "model": m.name,
                    "version": m.version,
                    "window_end": w.window_end,
                    "predictions": guess.predictions,
                    "expected_correct": guess.expected_correct,
                    "variance": guess.variance,
                    "extrapolated": guess.extrapolated,
                }
            )
    return rows


def record(store: Store, stored: Sequence[StoredWindow], references: ReferenceBook) -> int:
    """Store the estimates of newly stored windows; how many rows."""
    rows = estimate_rows(stored, references)
    if rows:
        with store.write_lock, store.engine.begin() as conn:
            conn.execute(accuracy_estimates.insert(), rows)
    return len(rows)


def estimated(
    store: Store, scope: LabelScope, group_by: Sequence[str] = ()
) -> dict[tuple[Any, ...], Estimate]:
    """Summed estimates in ``scope`` per value of the ``group_by`` columns."""
    t = accuracy_estimates.c
    keys = [t[name] for name in group_by]
    q = select(
        *keys,
        func.sum(t.predictions),
        func.sum(t.expected_correct),
        func.sum(t.variance),
        func.sum(t.extrapolated),
    )
    q = q.where(*scope.conditions(accuracy_estimates)).group_by(*keys)
    out: dict[tuple[Any, ...], Estimate] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(q):
            n, expected, variance, extrapolated = row[len(keys) :]
            if n:
                out[tuple(row[: len(keys)])] = Estimate(
                    int(n), float(expected), float(variance), int(extrapolated)
                )
    return out


def estimated_series(store: Store, scope: LabelScope, bucket_s: float) -> dict[int, Estimate]:
    """Summed estimates in ``scope`` per bucket of ``bucket_s`` seconds of ``window_end``."""
    t = accuracy_estimates.c
    bucket = func.floor(t.window_end / bucket_s)
    q = select(
        bucket,
        func.sum(t.predictions),
        func.sum(t.expected_correct),
        func.sum(t.variance),
        func.sum(t.extrapolated),
    )
    q = q.where(*scope.conditions(accuracy_estimates)).group_by(bucket)
    out: dict[int, Estimate] = {}
    with store.engine.connect() as conn:
        for b, n, expected, variance, extrapolated in conn.execute(q):
            if n:
                out[int(b)] = Estimate(int(n), float(expected), float(variance), int(extrapolated))
    return out


__all__ = ["estimate_rows", "estimated", "estimated_series", "record"]
