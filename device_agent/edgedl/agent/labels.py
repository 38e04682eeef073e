"""Late labels: the agent remembers recent predictions by id and matches true labels to them.

Every answered request gets an id (the Open Inference Protocol request ``id``, or one the
agent makes and returns); :meth:`PredictionLog.record` keeps ``id -> (model, version,
predicted classes, time)`` for the last ``max_predictions`` requests, at most ``max_age_s``
old. The application sends the true label later (``POST /v2/labels``);
:meth:`PredictionLog.label` matches it and tells every listener, which folds it into the
telemetry window as confusion-matrix counts. Nothing but counts leaves the device, and of
each labelled prediction's id a 64-bit digest (:func:`edgedl.telemetry.label_digest`), with
which the collector counts a label also sent to it directly only once.

What a label can come to (:class:`LabelStatus`):

* ``accepted``: matched a prediction not labelled before; its (actual, predicted) pairs count
  toward the model version that made it, also when the device has since replaced that version
  (``replaced`` is then true);
* ``duplicate``: the prediction already has its label (the first one counts);
* ``expired``: the prediction was forgotten (older than ``max_age_s``, or pushed out by newer
  ones); the last ``max_predictions`` forgotten ids are remembered to say so;
* ``unknown``: the agent never answered this id (or forgot it longer ago than that, or was
  restarted since: the log is in memory only);
* ``invalid``: the label is not a class index, or a list whose length is not the request's
  batch size.

Memory: about :data:`BYTES_PER_PREDICTION` bytes per remembered prediction of a batch-1 request
and about 160 per forgotten id (measured by ``bench/labels.py``), so the default 10,000 of
each take about 4.3 MB.
"""

from __future__ import annotations

import enum
import itertools
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from edgedl.profile import predicted_classes
from edgedl.telemetry import MAX_CLASSES

from .oip import InferenceRequest

#: Bytes one remembered prediction of a batch-1 request takes (bench/labels.py measures it).
BYTES_PER_PREDICTION = 270
#: Largest number of labels in one ``POST /v2/labels``.
MAX_LABELS_PER_REQUEST = 1000
#: Longest request id remembered (longer ones are answered but not remembered).
MAX_ID_LENGTH = 128
#: Largest batch remembered: a request of more samples is answered but cannot be labelled.
MAX_BATCH_REMEMBERED = 256


class LabelsConfig(BaseModel):
    """``[labels]``: how many predictions the agent remembers for late labels."""

    model_config = ConfigDict(extra="forbid")
    max_predictions: int = Field(default=10_000, ge=0, le=10_000_000)
    """Predictions remembered by id (the oldest are forgotten first); 0 turns labels off."""
    max_age_s: float = Field(default=14 * 86_400.0, gt=0)
    """A prediction older than this is forgotten: its label is answered ``expired``."""

    @property
    def enabled(self) -> bool:
        """Whether the agent keeps predictions for labels."""
        return self.max_predictions > 0


class LabelStatus(enum.StrEnum):
    """What became of one label."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    INVALID = "invalid"


#: The HTTP status answering a single label with this outcome.
HTTP_STATUS = {
    LabelStatus.ACCEPTED: 200,
    LabelStatus.DUPLICATE: 409,
    LabelStatus.UNKNOWN: 404,
    LabelStatus.EXPIRED: 410,
    LabelStatus.INVALID: 400,
}


@dataclass(slots=True)
class _Prediction:
    model: str
    version: str
    predicted: tuple[int, ...]
    classes: int
    time: float
    labelled: bool = False


@dataclass(frozen=True)
class LabelResult:
    """The answer to one label."""

    id: str
    status: LabelStatus
    message: str
    model: str | None = None
    version: str | None = None
    replaced: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The result as the API answers it."""
        out: dict[str, Any] = {"id": self.id, "status": str(self.status), "message": self.message}
        if self.model is not None:
            out["model_name"] = self.model
            out["model_version"] = self.version
            out["replaced"] = self.replaced
        return out


class LabelListener(Protocol):
    """Told of every label's outcome (the telemetry window counts them)."""

    def on_label(
        self,
        status: LabelStatus,
        model: str | None,
        version: str | None,
        pairs: Sequence[tuple[int, int]],
        replaced: bool,
        request_id: str | None = None,
    ) -> None:
        """One label: its outcome and, when accepted, its (actual, predicted) pairs and the
        id of the prediction it labels."""


class PredictionLog:
    """The bounded id -> prediction map (see the module docstring). Thread-safe."""

    def __init__(
        self,
        max_predictions: int = 10_000,
        max_age_s: float = 14 * 86_400.0,
        is_served: Callable[[str, str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_predictions = max_predictions
        self.max_age_s = max_age_s
        self._is_served = is_served
        self._clock = clock
        self._predictions: OrderedDict[str, _Prediction] = OrderedDict()
        self._forgotten: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[LabelListener] = []
        self._id_listeners: list[Callable[[str, Sequence[int]], None]] = []
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count()

    def add_listener(self, listener: LabelListener) -> None:
        """Tell ``listener`` of every label from now on."""
        self._listeners.append(listener)

    def add_id_listener(self, listener: Callable[[str, Sequence[int]], None]) -> None:
        """Call ``listener(id, labels)`` for every accepted label (the sampler's labels)."""
        self._id_listeners.append(listener)

    def __len__(self) -> int:
        return len(self._predictions)

    def new_id(self) -> str:
        """A fresh id for a request that brought none (unique within this agent's life)."""
        return f"{self._prefix}-{next(self._counter)}"

    def record(
        self, request_id: str, model: str, version: str, predicted: Sequence[int], classes: int
    ) -> None:
        """Remember a request's predicted classes (one per sample) under ``request_id``.

        An id used again replaces the prediction it named. An id longer than
        :data:`MAX_ID_LENGTH` or a batch over :data:`MAX_BATCH_REMEMBERED` is not remembered.
        """
        if len(request_id) > MAX_ID_LENGTH or len(predicted) > MAX_BATCH_REMEMBERED:
            return
        now = self._clock()
        entry = _Prediction(model, version, tuple(predicted), classes, now)
        with self._lock:
            preds = self._predictions
            if request_id in preds:
                del preds[request_id]
            preds[request_id] = entry
            while len(preds) > self.max_predictions:
                self._forget(preds.popitem(last=False)[0])
            while preds:
                oldest_id, oldest = next(iter(preds.items()))
                if now - oldest.time <= self.max_age_s:
                    break
                del preds[oldest_id]
                self._forget(oldest_id)

    def _forget(self, request_id: str) -> None:
        forgotten = self._forgotten
        forgotten[request_id] = None
        while len(forgotten) > self.max_predictions:
            forgotten.popitem(last=False)

    def label(self, request_id: Any, label: Any) -> LabelResult:
        """Match the true ``label`` (a class index, or one per sample) to ``request_id``."""
        result, pairs = self._match(request_id, label)
        for listener in self._listeners:
            listener.on_label(
                result.status,
                result.model,
                result.version,
                pairs,
                result.replaced,
                request_id=result.id if result.status is LabelStatus.ACCEPTED else None,
            )
        if result.status is LabelStatus.ACCEPTED:
            for id_listener in self._id_listeners:
                id_listener(result.id, [actual for actual, _ in pairs])
        return result

    def _match(self, request_id: Any, label: Any) -> tuple[LabelResult, list[tuple[int, int]]]:
        if not isinstance(request_id, str) or not request_id:
            shown = str(request_id)[:MAX_ID_LENGTH]
            return LabelResult(shown, LabelStatus.INVALID, '"id" must be a non-empty string'), []
        labels = label if isinstance(label, list) else [label]
        with self._lock:
            pred = self._predictions.get(request_id)
            if pred is None:
                if request_id in self._forgotten:
                    return self._expired(request_id), []
                return LabelResult(
                    request_id,
                    LabelStatus.UNKNOWN,
                    "no prediction with this id (never answered here, or the agent restarted "
                    "or forgot it long ago)",
                ), []
            if self._clock() - pred.time > self.max_age_s:
                del self._predictions[request_id]
                self._forget(request_id)
                return self._expired(request_id), []
            found = (pred.model, pred.version)
            why = _invalid(labels, pred)
            if why is not None:
                return LabelResult(request_id, LabelStatus.INVALID, why, *found), []
            if pred.labelled:
                return LabelResult(
                    request_id,
                    LabelStatus.DUPLICATE,
                    "this prediction already has its label (the first one counts)",
                    *found,
                ), []
            pred.labelled = True
            predicted = pred.predicted
        replaced = self._is_served is not None and not self._is_served(*found)
        message = "counted"
        if replaced:
            message = f"counted toward version {found[1]}, which the agent no longer serves"
        pairs = list(zip(labels, predicted, strict=True))
        return LabelResult(request_id, LabelStatus.ACCEPTED, message, *found, replaced), pairs

    def _expired(self, request_id: str) -> LabelResult:
        return LabelResult(
            request_id,
            LabelStatus.EXPIRED,
            f"the prediction was forgotten: the agent keeps the last {self.max_predictions} "
            f"for at most {self.max_age_s:g} s ([labels] max_predictions, max_age_s)",
        )


def remember(
    predictions: PredictionLog | None,
    model: str,
    version: str,
    request: InferenceRequest,
    outputs: Mapping[str, NDArray[Any]],
) -> None:
    """Give an answered request its id (``request.id``, or a new one) and remember its
    predicted classes for late labels; the HTTP and gRPC APIs call it once per answer."""
    if predictions is None:
        return
    if request.id is None:
        request.id = predictions.new_id()
    batch = next(iter(request.inputs.values())).shape[:1] if request.inputs else ()
    if not batch or batch[0] > MAX_BATCH_REMEMBERED:
        return  # answered with its id, but too large a batch to remember
    found = predicted_classes(outputs)
    if found is not None:
        classes, width = found
        predictions.record(request.id, model, version, classes.tolist(), width)


def _invalid(labels: list[Any], pred: _Prediction) -> str | None:
    if len(labels) != len(pred.predicted):
        return (
            f"the request had {len(pred.predicted)} samples: send one label "
            f"{'or a list of 1' if len(pred.predicted) == 1 else 'per sample, as a list'}"
        )
    limit = min(pred.classes, MAX_CLASSES)
    for value in labels:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
            return f"a label must be a class index from 0 to {limit - 1}, got {value!r}"
    return None


__all__ = [
    "BYTES_PER_PREDICTION",
    "HTTP_STATUS",
    "MAX_BATCH_REMEMBERED",
    "MAX_ID_LENGTH",
    "MAX_LABELS_PER_REQUEST",
    "LabelListener",
    "LabelResult",
    "LabelStatus",
    "LabelsConfig",
    "PredictionLog",
    "remember",
]
