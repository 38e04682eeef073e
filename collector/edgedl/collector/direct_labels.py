"""Late labels sent straight to the collector, counted with the agent's into one accuracy.

Applications whose true labels appear in the cloud post them to ``POST /api/v1/labels``
instead of to the device. The collector keeps no id -> prediction map, so a label finds its
prediction in one of two ways:

* the request carries it: ``model``, ``version`` and ``predicted`` (the class the device
  answered, or one per sample of a batch request) beside ``fleet``, ``device``, ``id`` and
  ``label``;
* or the id names a stored sample (``[sampling]`` on the device): the sample's model,
  version and predicted class are used, and the label is also stored as the sample's label.

An accepted label becomes confusion cells in ``label_confusion`` (``window_id`` 0, its
``window_end`` the time the collector received it, ``prediction`` its id's
:func:`~edgedl.telemetry.label_digest`), so ``/api/v1/accuracy``, the dashboard and the
accuracy alerts count it per device, model version and fleet like the labels devices send.

**Counted once across both routes.** Every counted prediction has a row in
``labelled_predictions`` keyed by (fleet, device, id digest), with the route that brought its
label. A window's ``models[].labels.ids`` carries the digests of the predictions the agent
counted in it. So:

* a label for a prediction already counted (by either route) is answered ``duplicate``
  (409) and not counted;
* when a window brings an agent's count of a prediction whose label came here first, the
  collector's cells of that label are deleted in the transaction that stores the window, and
  the row's route becomes ``agent``: the device's count, made against the prediction it
  remembers, is the one that stays.

Per label: ``accepted`` (200), ``duplicate`` (409), ``unknown`` (404: a device the
collector never heard from, a model version neither registered nor seen from that device, an
id that names no stored sample when the prediction is not given) or ``invalid`` (400).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, exists, select, update

from edgedl.telemetry import MAX_CLASSES, MAX_NAME, label_digest

from .batch import StoredWindow
from .schema import (
    devices,
    label_confusion,
    labelled_predictions,
    model_references,
    sample_labels,
    samples,
    windows,
)

if TYPE_CHECKING:
    from .store import Store

#: Most labels in one ``POST /api/v1/labels``.
MAX_LABELS_PER_REQUEST = 1000
#: Longest prediction id taken (as on the agent).
MAX_ID_LENGTH = 128
#: Most samples one label may cover (a batch request's labels).
MAX_BATCH = 256
#: The HTTP status answering a single label with each outcome.
HTTP_STATUS = {"accepted": 200, "duplicate": 409, "unknown": 404, "invalid": 400}
_CHUNK = 500


@dataclass(frozen=True)
class DirectLabelResult:
    """What became of one label sent to the collector."""

    id: str
    status: str
    message: str
    fleet: str | None = None
    device: str | None = None
    model: str | None = None
    version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as the API answers it."""
        out: dict[str, Any] = {"id": self.id, "status": self.status, "message": self.message}
        for key in ("fleet", "device", "model", "version"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class _Parsed:
    fleet: str
    device: str
    id: str
    labels: tuple[int, ...]
    model: str | None
    version: str | None
    predicted: tuple[int, ...] | None


def _classes(value: Any, what: str) -> tuple[int, ...] | str:
    values = value if isinstance(value, list) else [value]
    if not values or len(values) > MAX_BATCH:
        return f'"{what}" must be a class index or a list of 1 to {MAX_BATCH} of them'
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_CLASSES:
            return f'"{what}" must hold class indexes from 0 to {MAX_CLASSES - 1}, got {v!r}'
    return tuple(values)


def _name(item: dict[str, Any], key: str, required: bool) -> str | None:
    value = item.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
        raise ValueError(f'"{key}" must be a non-empty string of at most {MAX_NAME} characters')
    return value


def parse_label(item: Any) -> _Parsed | DirectLabelResult:
    """One label of a request, checked; a ``DirectLabelResult`` (invalid) when malformed."""
    if not isinstance(item, dict):
        return DirectLabelResult("", "invalid", 'a label is an object {"fleet", "device", ...}')
    raw_id = item.get("id")
    if not isinstance(raw_id, str) or not 0 < len(raw_id) <= MAX_ID_LENGTH:
        shown = str(raw_id)[:MAX_ID_LENGTH]
        why = f'"id" must be a non-empty string of at most {MAX_ID_LENGTH} characters'
        return DirectLabelResult(shown, "invalid", why)
    try:
        fleet = _name(item, "fleet", True)
        device = _name(item, "device", True)
        model = _name(item, "model", False)
        version = _name(item, "version", False)
    except ValueError as exc:
        return DirectLabelResult(raw_id, "invalid", str(exc))
    assert fleet is not None and device is not None
    labels = _classes(item.get("label"), "label")
    if isinstance(labels, str):
        return DirectLabelResult(raw_id, "invalid", labels, fleet, device)
    predicted: tuple[int, ...] | None = None
    if item.get("predicted") is not None:
        found = _classes(item["predicted"], "predicted")
        if isinstance(found, str):
            return DirectLabelResult(raw_id, "invalid", found, fleet, device)
        if len(found) != len(labels):
            why = f'"label" has {len(labels)} classes and "predicted" {len(found)}: one each'
            return DirectLabelResult(raw_id, "invalid", why, fleet, device)
        if model is None or version is None:
            why = 'with "predicted", send the "model" and "version" that made the prediction'
            return DirectLabelResult(raw_id, "invalid", why, fleet, device)
        predicted = found
    return _Parsed(fleet, device, raw_id, labels, model, version, predicted)


class DirectLabels:
    """Counts labels sent to the collector (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def label(self, item: Any, now: float | None = None) -> DirectLabelResult:
        """Count one label (a request body's object) unless already counted."""
        parsed = parse_label(item)
        if isinstance(parsed, DirectLabelResult):
            return parsed
        now = time.time() if now is None else now
        store = self._store
        with store.write_lock, store.engine.begin() as conn:
            return self._count(conn, parsed, now)

    def _count(self, conn: Any, p: _Parsed, now: float) -> DirectLabelResult:
        def answer(
            status: str, message: str, model: str | None = None, version: str | None = None
        ) -> DirectLabelResult:
            return DirectLabelResult(p.id, status, message, p.fleet, p.device, model, version)

        known = select(devices.c.device).where(
            devices.c.fleet == p.fleet, devices.c.device == p.device
        )
        if conn.execute(known).first() is None:
            return answer("unknown", f"no device {p.device!r} in fleet {p.fleet!r} has reported")
        pairs: list[tuple[int, int]]
        sampled: list[dict[str, Any]] = []
        if p.predicted is None:
            sampled = self._samples(conn, p)
            if not sampled:
                return answer(
                    "unknown",
                    "no stored sample has this prediction id: send the prediction with the "
                    'label ("model", "version", "predicted")',
                )
            model, version = sampled[0]["model"], sampled[0]["version"]
            if max(s["batch_index"] for s in sampled) >= len(p.labels):
                why = f"the sampled request had more than {len(p.labels)} samples: one label each"
                return answer("invalid", why, model, version)
            pairs = [
                (p.labels[s["batch_index"]], s["predicted"])
                for s in sampled
                if s["predicted"] is not None
            ]
        else:
            model, version = p.model, p.version
            assert model is not None and version is not None
            if not self._known_version(conn, p.fleet, p.device, model, version):
                return answer(
                    "unknown",
                    f"model {model} version {version} is neither registered nor reported by "
                    f"{p.fleet}/{p.device}",
                    model,
                    version,
                )
            pairs = list(zip(p.labels, p.predicted, strict=True))
        digest = label_digest(p.id)
        claim = (
            self._store.insert(labelled_predictions)
            .values(
                fleet=p.fleet,
                device=p.device,
                prediction=digest,
                route="collector",
                model=model,
                version=version,
                received_at=now,
            )
            .on_conflict_do_nothing(index_elements=["fleet", "device", "prediction"])
            .returning(labelled_predictions.c.route)
        )
        if conn.execute(claim).first() is None:
            route = conn.execute(
                select(labelled_predictions.c.route).where(
                    labelled_predictions.c.fleet == p.fleet,
                    labelled_predictions.c.device == p.device,
                    labelled_predictions.c.prediction == digest,
                )
            ).scalar_one()
            through = "the device (agent)" if route == "agent" else "the collector"
            return answer(
                "duplicate",
                f"this prediction's label is already counted, sent through {through}: the "
                "first one counts",
                model,
                version,
            )
        cells = Counter(pairs)
        if cells:
            conn.execute(
                label_confusion.insert(),
                [
                    {
                        "window_id": 0,
                        "fleet": p.fleet,
                        "device": p.device,
                        "model": model,
                        "version": version,
                        "window_end": now,
                        "actual": a,
                        "predicted": b,
                        "count": c,
                        "prediction": digest,
                    }
                    for (a, b), c in sorted(cells.items())
                ],
            )
        if sampled:
            stmt = self._store.insert(sample_labels).on_conflict_do_nothing(
                index_elements=["sample_id"]
            )
            conn.execute(
                stmt,
                [
                    {
                        "sample_id": s["sample_id"],
                        "received_at": now,
                        "label": p.labels[s["batch_index"]],
                    }
                    for s in sampled
                ],
            )
        return answer("accepted", "counted", model, version)

    @staticmethod
    def _samples(conn: Any, p: _Parsed) -> list[dict[str, Any]]:
        s = samples.c
        q = select(s.sample_id, s.model, s.version, s.batch_index, s.predicted).where(
            s.fleet == p.fleet, s.device == p.device, s.prediction_id == p.id
        )
        return [dict(r._mapping) for r in conn.execute(q.order_by(s.batch_index))]

    @staticmethod
    def _known_version(conn: Any, fleet: str, device: str, model: str, version: str) -> bool:
        w, r = windows.c, model_references.c
        registered = exists().where(r.model == model, r.version == version)
        reported = exists().where(
            w.fleet == fleet, w.device == device, w.model == model, w.version == version
        )
        return bool(conn.execute(select(registered | reported)).scalar())


def claim_agent_labels(conn: Any, insert: Any, stored: Sequence[StoredWindow]) -> int:
    """Record the predictions newly stored windows counted labels of (``labels.ids``), in the
    windows' transaction; the collector's own cells of any of them are deleted (the agent's
    count replaces them). How many of the collector's labels were replaced."""
    rows: list[dict[str, Any]] = []
    for item in stored:
        w = item.window
        for m in w.models:
            if m.labels is not None and m.labels.ids:
                rows.extend(
                    {
                        "fleet": w.fleet,
                        "device": w.device,
                        "prediction": d,
                        "route": "agent",
                        "model": m.name,
                        "version": m.version,
                        "received_at": item.received_at,
                    }
                    for d in m.labels.ids
                )
    if not rows:
        return 0
    stmt = insert(labelled_predictions).on_conflict_do_nothing(
        index_elements=["fleet", "device", "prediction"]
    )
    conn.execute(stmt, rows)
    by_device: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        by_device.setdefault((r["fleet"], r["device"]), []).append(r["prediction"])
    lp, lc = labelled_predictions.c, label_confusion.c
    replaced = 0
    for (fleet, device), digests in by_device.items():
        for start in range(0, len(digests), _CHUNK):
            chunk = digests[start : start + _CHUNK]
            mine = and_(
                lp.fleet == fleet,
                lp.device == device,
                lp.prediction.in_(chunk),
                lp.route == "collector",
            )
            theirs = list(conn.execute(select(lp.prediction).where(mine)).scalars())
            if not theirs:
                continue
            replaced += len(theirs)
            conn.execute(
                delete(label_confusion).where(
                    lc.window_id == 0,
                    lc.fleet == fleet,
                    lc.device == device,
                    lc.prediction.in_(theirs),
                )
            )
            conn.execute(update(labelled_predictions).where(mine).values(route="agent"))
    return replaced


__all__ = [
    "HTTP_STATUS",
    "MAX_LABELS_PER_REQUEST",
    "DirectLabelResult",
    "DirectLabels",
    "claim_agent_labels",
    "parse_label",
]
