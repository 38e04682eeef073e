"""The telemetry contract between the agent and the collector (design contract 3.3).

Every window (N seconds or M inferences) a device publishes one :class:`TelemetryWindow` on
:func:`telemetry_topic`; at connect it publishes a retained :class:`DeviceStatus` on
:func:`status_topic` and leaves a last will saying it went offline. Topics are built only by
the functions here, never by string concatenation elsewhere.

Histograms in a window are :meth:`edgedl.profile.Histogram.to_dict` dicts. Latency and batch
size use the fixed edges :data:`LATENCY_EDGES_MS` and :data:`BATCH_SIZE_EDGES`; the input and
output histograms use the edges of the bundle manifest's reference profile. So every device's
histograms sum into fleet histograms with :meth:`~edgedl.profile.Histogram.merge`.

Wire format: JSON, compressed with zstd (default) or gzip, or plain. The decoder detects the
compression from the payload's first bytes, so MQTT 3.1.1 (no content-type property) works
too; over MQTT 5 the content type also goes in the message's content-type property.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import operator
import re
import threading
import zlib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import DataError, TelemetryError
from .profile import MAX_VALUE, PROFILE_SCHEMA_VERSION, Histogram, Profile

#: Version of the status and desired-state messages.
SCHEMA_VERSION = 1
#: Version of the telemetry window an agent writes when the window carries late labels; it
#: writes 1 otherwise, so an agent without labels still talks to a collector that reads only 1.
#: Version 2 added ``labels`` and ``models[].labels`` (late labels, docs/telemetry.md).
WINDOW_SCHEMA_VERSION = 2
#: The window versions this edgedl reads.
WINDOW_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
TOPIC_ROOT = "edgedl/v1"

#: Latency bin edges in milliseconds: 5 per decade, log-spaced from 0.1 ms to 10 s.
LATENCY_EDGES_MS: tuple[float, ...] = tuple(float(f"{v:.4g}") for v in np.logspace(-1.0, 4.0, 26))
#: Batch size bin edges: powers of two from 1 to 256.
BATCH_SIZE_EDGES: tuple[float, ...] = tuple(float(2**i) for i in range(9))

Compression = Literal["zstd", "gzip", "none"]
CONTENT_TYPES: dict[str, str] = {
    "none": "application/json",
    "zstd": "application/json+zstd",
    "gzip": "application/json+gzip",
}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"

#: Largest message accepted on the wire (compressed), and largest decompressed JSON.
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DECODED_BYTES = 1024 * 1024

MAX_MODELS = 16
MAX_EDGES = 256
MAX_HISTOGRAMS = 512
MAX_CLASSES = 4096
MAX_PIPELINE_FIGURES = 2048
MAX_SAMPLES = 64
#: Most cells of one model version's sparse confusion matrix in one window.
MAX_CONFUSION_CELLS = 1024
#: Most prediction-id digests of one model version's labels in one window.
MAX_LABEL_IDS = 8192
MAX_NAME = 128
_MAX_INT = 2**63 - 1

# Ranges of the numbers in a window and a status (docs/telemetry.md, "Ranges"). They keep
# every figure the collector derives from stored windows finite and exact: sums of counts
# stay far below 2**63, sums of values and of their squares far below the largest float.
#: Largest count in one window: any counter, histogram bin, histogram count or sample count.
MAX_COUNT = 2**32 - 1
# MAX_VALUE (edgedl.profile, which counts values beyond it as missing) is the largest
# magnitude of a histogram edge and of any value a histogram counts: its square times
# MAX_COUNT is about 4e209, so sums over any fleet stay finite.
_MAX_SQUARE = MAX_VALUE * MAX_VALUE
#: Latest timestamp accepted (2100-01-01T00:00:00Z, seconds since the epoch); earliest is 0.
MAX_TIMESTAMP = 4_102_444_800.0
#: Longest window (31 days).
MAX_WINDOW_S = 31 * 86_400.0
#: Largest memory figure (256 TiB).
MAX_BYTES = 2**48
#: A histogram's sum and sum of squares may exceed what its bins allow by this share of the
#: bound's magnitude: float rounding of the device's running sums, never more.
MOMENT_TOLERANCE = 1e-6
#: Largest string in the free-form ``samples`` records and ``rollout`` status.
MAX_TEXT = 1024

SHARED_TELEMETRY_SUBSCRIPTION = "$share/{group}/" + TOPIC_ROOT + "/+/+/telemetry"
TELEMETRY_SUBSCRIPTION = TOPIC_ROOT + "/+/+/telemetry"
STATUS_SUBSCRIPTION = TOPIC_ROOT + "/+/+/status"

_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

_M = TypeVar("_M", bound=BaseModel)

NonNegInt = Annotated[int, Field(ge=0, le=_MAX_INT)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Timestamp = Annotated[float, Field(ge=0.0, le=MAX_TIMESTAMP)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it is a valid fleet or device id, else raise :class:`TelemetryError`.

    Ids are 1-128 letters, digits, ``.``, ``_`` or ``-``: never ``/``, ``+`` or ``#``, which
    would change the meaning of an MQTT topic.
    """
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise TelemetryError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-'"
        )
    return value


def _id(value: str) -> str:
    try:
        return validate_id(value)
    except TelemetryError as exc:
        raise ValueError(str(exc)) from None


DeviceId = Annotated[str, AfterValidator(_id)]

#: A spool epoch: the random id an agent picks when it creates its spool (one per life of the
#: device's telemetry: a re-imaged device starts a new one). ``""`` for windows of agents that
#: predate epochs.
Epoch = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")]


# ---------------------------------------------------------------------------- topics


def telemetry_topic(fleet: str, device: str) -> str:
    """``edgedl/v1/{fleet}/{device}/telemetry``: one :class:`TelemetryWindow` per message."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/{validate_id(device, 'device')}/telemetry"


def status_topic(fleet: str, device: str) -> str:
    """``edgedl/v1/{fleet}/{device}/status``: retained :class:`DeviceStatus`, also the last will."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/{validate_id(device, 'device')}/status"


def events_topic(fleet: str, device: str) -> str:
    """``edgedl/v1/{fleet}/{device}/events``: pipeline detections and other device events."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/{validate_id(device, 'device')}/events"


def desired_topic(fleet: str, device: str) -> str:
    """``edgedl/v1/{fleet}/{device}/desired``: retained :class:`DesiredState` set by the collector."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/{validate_id(device, 'device')}/desired"


def alerts_topic(fleet: str) -> str:
    """``edgedl/v1/{fleet}/alerts``: alerts the collector raises and resolves."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/alerts"


def shared_telemetry_subscription(group: str) -> str:
    """The MQTT 5 shared subscription by which collectors of ``group`` split the telemetry."""
    return SHARED_TELEMETRY_SUBSCRIPTION.format(group=validate_id(group, "group"))


def telemetry_subscription(fleet: str = "+", group: str | None = None) -> str:
    """The telemetry of one fleet (or of all, ``+``), shared by ``group`` when given."""
    fleet = fleet if fleet == "+" else validate_id(fleet, "fleet")
    plain = f"{TOPIC_ROOT}/{fleet}/+/telemetry"
    return f"$share/{validate_id(group, 'group')}/{plain}" if group else plain


def status_subscription(fleet: str = "+") -> str:
    """The status messages of one fleet (or of all, ``+``)."""
    fleet = fleet if fleet == "+" else validate_id(fleet, "fleet")
    return f"{TOPIC_ROOT}/{fleet}/+/status"


def parse_topic(topic: str) -> tuple[str, str, str]:
    """``(fleet, device, kind)`` of a device topic; :class:`TelemetryError` for any other."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise TelemetryError(f"not an edgedl device topic: {topic[:200]!r}")
    _, _, fleet, device, kind = parts
    return validate_id(fleet, "fleet"), validate_id(device, "device"), kind


# ---------------------------------------------------------------------------- payloads


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class HistogramData(_Strict):
    """A histogram as :meth:`Histogram.to_dict` writes it, with its shape checked."""

    edges: list[float] = Field(min_length=2, max_length=MAX_EDGES)
    counts: list[Count] = Field(min_length=3, max_length=MAX_EDGES + 1)
    count: Count = 0
    sum: float = 0.0
    sum_sq: float = 0.0
    missing: Count = 0

    @model_validator(mode="after")
    def _shape(self) -> HistogramData:
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"{len(self.counts)} counts do not fit {len(self.edges)} edges")
        edges = self.edges
        if any(map(operator.ge, edges, itertools.islice(edges, 1, None))):
            raise ValueError("edges must be increasing")
        if edges[0] < -MAX_VALUE or edges[-1] > MAX_VALUE:
            raise ValueError(f"edges must lie within +-{MAX_VALUE:g}")
        _check_moments(self.counts, edges, self.count, self.sum, self.sum_sq)
        return self

    def to_histogram(self) -> Histogram:
        """The :class:`Histogram` this dict describes."""
        return Histogram.from_dict(self.model_dump())


def _fixed_edges(edges: tuple[float, ...], what: str) -> Any:
    def check(h: HistogramData) -> HistogramData:
        # Exactly equal, so that device histograms merge into fleet histograms.
        if tuple(h.edges) != edges:
            raise ValueError(f"{what} histogram must use the fixed edges of edgedl.telemetry")
        return h

    return AfterValidator(check)


def _check_moments(
    counts: list[int], edges: list[float], count: int, total: float, total_sq: float
) -> None:
    """``count``, ``total`` and ``total_sq`` must be what values in these bins can add up to.

    Values in the open bin below the first edge lie in ``[-MAX_VALUE, edges[0]]``, those in
    the inner bins in ``[edges[0], edges[-1]]``, those in the open bin above the last edge in
    ``[edges[-1], MAX_VALUE]``. So the sum lies between the counts of these three parts times
    their lower limits and times their upper limits, and the sum of squares between 0 (a float
    sum of squares never rounds below it) and the counts times the largest squares; give or
    take :data:`MOMENT_TOLERANCE` of the largest magnitude allowed (the device's float
    rounding). Three parts rather than every bin: as sound, and no pass over the bins.
    """
    if count != sum(counts):
        raise ValueError(f"count {count} is not the sum of the bin counts ({sum(counts)})")
    if not count:
        if total or total_sq:
            raise ValueError("sum and sum_sq must be 0 when nothing is counted")
        return
    below, above = counts[0], counts[-1]
    outside = below + above
    inner = count - outside
    first, last = edges[0], edges[-1]
    low = inner * first + above * last - below * MAX_VALUE
    high = below * first + inner * last + above * MAX_VALUE
    inner_mag = last if last > -first else -first
    tol = MOMENT_TOLERANCE * (inner * inner_mag + outside * MAX_VALUE)
    if not low - tol <= total <= high + tol:
        raise ValueError(
            f"sum {total:g} cannot come from these bins (between {low:g} and {high:g})"
        )
    high_sq = inner * inner_mag * inner_mag + outside * _MAX_SQUARE
    if not 0.0 <= total_sq <= high_sq * (1.0 + MOMENT_TOLERANCE):
        raise ValueError(f"sum_sq {total_sq:g} cannot come from these bins (at most {high_sq:g})")


LatencyHistogram = Annotated[HistogramData, _fixed_edges(LATENCY_EDGES_MS, "latency")]
BatchSizeHistogram = Annotated[HistogramData, _fixed_edges(BATCH_SIZE_EDGES, "batch size")]


class ProfileData(_Strict):
    """A profile as :meth:`Profile.to_dict` writes it: histograms on the reference edges."""

    schema_version: int = PROFILE_SCHEMA_VERSION
    samples: Count = 0
    histograms: dict[Name, HistogramData] = Field(default_factory=dict)
    class_counts: dict[Name, list[Count]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounds(self) -> ProfileData:
        if self.schema_version != PROFILE_SCHEMA_VERSION:
            raise ValueError(f"unsupported profile schema_version {self.schema_version}")
        if len(self.histograms) > MAX_HISTOGRAMS or len(self.class_counts) > MAX_HISTOGRAMS:
            raise ValueError(f"at most {MAX_HISTOGRAMS} histograms and class counts")
        if any(len(c) > MAX_CLASSES for c in self.class_counts.values()):
            raise ValueError(f"at most {MAX_CLASSES} classes")
        return self

    def to_profile(self) -> Profile:
        """The :class:`Profile` this dict describes."""
        try:
            return Profile.from_dict(self.model_dump())
        except DataError as exc:
            raise TelemetryError(str(exc)) from exc


class Counts(_Strict):
    """What a model did in the window."""

    requests: Count = 0
    inferences: Count = 0
    errors: Count = 0
    rejected: Count = 0
    latency_violations: Count = 0


class ShadowWindow(_Strict):
    """A candidate version run in shadow next to the served one: how often they agreed."""

    candidate_version: Name
    compared: Count = 0
    agreed: Count = 0
    latency_ms: LatencyHistogram | None = None

    @model_validator(mode="after")
    def _agreed(self) -> ShadowWindow:
        if self.agreed > self.compared:
            raise ValueError("agreed is more than compared")
        return self


ClassIndex = Annotated[int, Field(ge=0, lt=MAX_CLASSES)]


#: A :func:`label_digest`: 16 lowercase hex digits.
LabelDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


def label_digest(prediction_id: str) -> str:
    """The 64-bit BLAKE2b digest (hex) of a prediction id: what a window carries of the ids
    whose labels it counts, and what the collector compares labels sent to it directly with."""
    return hashlib.blake2b(prediction_id.encode("utf-8"), digest_size=8).hexdigest()


class ModelLabels(_Strict):
    """Late labels matched to this model version's predictions in the window (window v2).

    ``confusion`` is a sparse confusion matrix: ``[actual, predicted, count]`` cells, each
    pair at most once, counts only (never an input, and of each labelled prediction's id only
    a 64-bit digest). Labels past :data:`MAX_CONFUSION_CELLS` distinct cells are counted in
    ``overflow`` and in no cell.
    """

    confusion: list[tuple[ClassIndex, ClassIndex, Count]] = Field(
        default_factory=list, max_length=MAX_CONFUSION_CELLS
    )
    overflow: Count = 0
    ids: list[LabelDigest] | None = Field(default=None, max_length=MAX_LABEL_IDS)
    """:func:`label_digest` of the prediction ids whose labels are in the matrix (so that the
    collector counts a label sent to it directly as well only once); absent from agents
    that predate it. Labels past :data:`MAX_LABEL_IDS` in a window count in ``ids_overflow``."""
    ids_overflow: Count = 0

    @model_validator(mode="after")
    def _unique_cells(self) -> ModelLabels:
        if len({(a, p) for a, p, _ in self.confusion}) != len(self.confusion):
            raise ValueError("a confusion cell (actual, predicted) appears more than once")
        return self

    @property
    def labelled(self) -> int:
        """Labels in the matrix."""
        return sum(c for _, _, c in self.confusion)

    @property
    def correct(self) -> int:
        """Labels that matched the prediction (the matrix's diagonal)."""
        return sum(c for a, p, c in self.confusion if a == p)


class LabelCounts(_Strict):
    """What became of the late labels the device received in the window (window v2).

    ``received`` = ``matched`` + ``duplicate`` + ``unknown`` + ``expired`` + ``invalid``;
    ``replaced`` counts the matched labels whose prediction came from a model version the
    device no longer serves (they count toward that version, as its accuracy).
    """

    received: Count = 0
    matched: Count = 0
    duplicate: Count = 0
    unknown: Count = 0
    expired: Count = 0
    invalid: Count = 0
    replaced: Count = 0

    @model_validator(mode="after")
    def _adds_up(self) -> LabelCounts:
        parts = self.matched + self.duplicate + self.unknown + self.expired + self.invalid
        if parts != self.received:
            raise ValueError(f"received {self.received} is not the sum of its outcomes ({parts})")
        if self.replaced > self.matched:
            raise ValueError("replaced is more than matched")
        return self


class ModelWindow(_Strict):
    """One served model version's figures in a window."""

    name: Name
    version: Name
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    counts: Counts = Field(default_factory=Counts)
    latency_ms: LatencyHistogram
    batch_size: BatchSizeHistogram
    profile: ProfileData | None = None
    shadow: ShadowWindow | None = None
    labels: ModelLabels | None = None


class SystemFigures(_Strict):
    """The device's load in the window (temperature only where the device exposes it)."""

    cpu_percent: float = Field(default=0.0, ge=0.0, le=100_000.0)
    memory_rss_bytes: Annotated[int, Field(ge=0, le=MAX_BYTES)] = 0
    memory_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    temperature_c: float | None = Field(default=None, ge=-273.15, le=1000.0)


class SpoolFigures(_Strict):
    """The device's spool: windows waiting, and windows discarded past its bound since the last."""

    pending: Count = 0
    dropped: Count = 0


def _check_figures(value: Any, depth: int, budget: list[int]) -> None:
    """Nested dicts of finite numbers, bounded in depth, key length and size."""
    if depth > 4:
        raise ValueError("pipelines nest too deep (at most pipeline/stage/figure/field)")
    if not isinstance(value, dict):
        raise ValueError("pipelines must be nested objects of numbers")
    for key, item in value.items():
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"pipelines carry more than {MAX_PIPELINE_FIGURES} figures")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_NAME:
            raise ValueError("pipeline figure names must be 1-128 characters")
        if isinstance(item, dict):
            _check_figures(item, depth + 1, budget)
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ValueError(f"pipeline figure {key!r} must be a number")
        elif not _finite_number(item):
            raise ValueError(f"pipeline figure {key!r} must be finite, within +-{MAX_VALUE:g}")


def _finite_number(value: float) -> bool:
    """Whether a JSON number is finite and within +-MAX_VALUE (ints of any size included)."""
    return -MAX_VALUE <= value <= MAX_VALUE  # False for NaN and the infinities


def _check_free_json(value: Any, depth: int = 0) -> None:
    """Free-form JSON (sample records, rollout status): bounded depth, numbers and strings.

    Its size is bounded by the message's (MAX_DECODED_BYTES), so there is no count here: a
    window with sampling on carries one value per statistic per record.
    """
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if not _finite_number(value):
            raise ValueError(f"numbers must be finite, within +-{MAX_VALUE:g}")
    elif isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"strings must be at most {MAX_TEXT} characters")
    elif depth >= 4:
        raise ValueError("nests too deep (at most 4 levels)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_free_json(key, depth + 1)
            _check_free_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_free_json(item, depth + 1)
    else:
        raise ValueError("must be JSON")


def _free_json(value: Any) -> Any:
    _check_free_json(value)
    return value


FreeJson = AfterValidator(_free_json)


def _pipelines(value: dict[str, Any]) -> dict[str, Any]:
    _check_figures(value, 1, [MAX_PIPELINE_FIGURES])
    return value


Pipelines = Annotated[dict[str, Any], AfterValidator(_pipelines)]


class TelemetryWindow(_Strict):
    """One device's telemetry over one window: the payload of :func:`telemetry_topic`.

    ``seq`` increases by one per window within the spool ``epoch`` and is kept across agent
    restarts; a new spool (a re-imaged device) starts a new epoch at seq 0. The collector
    stores each ``(fleet, device, epoch, seq)`` once.
    """

    schema_version: int = WINDOW_SCHEMA_VERSION
    fleet: DeviceId
    device: DeviceId
    epoch: Epoch = ""
    seq: NonNegInt
    window_start: Timestamp
    window_end: Timestamp
    agent_version: Annotated[str, Field(max_length=64)] = ""
    models: list[ModelWindow] = Field(default_factory=list, max_length=MAX_MODELS)
    system: SystemFigures = Field(default_factory=SystemFigures)
    pipelines: Pipelines = Field(default_factory=dict)
    spool: SpoolFigures = Field(default_factory=SpoolFigures)
    samples: Annotated[list[dict[str, Any]] | None, Field(max_length=MAX_SAMPLES), FreeJson] = None
    labels: LabelCounts | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v not in WINDOW_SCHEMA_VERSIONS:
            known = ", ".join(map(str, WINDOW_SCHEMA_VERSIONS))
            raise ValueError(f"unsupported schema_version {v} (this edgedl reads {known})")
        return v

    @model_validator(mode="after")
    def _window(self) -> TelemetryWindow:
        if self.schema_version < 2 and (
            self.labels is not None or any(m.labels is not None for m in self.models)
        ):
            raise ValueError("labels need schema_version 2")
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        if self.window_end - self.window_start > MAX_WINDOW_S:
            raise ValueError(f"the window is longer than {MAX_WINDOW_S:g} s")
        return self

    @property
    def inferences(self) -> int:
        """Inferences in the window over all models."""
        return sum(m.counts.inferences for m in self.models)


class ModelRef(_Strict):
    """A model version a device serves."""

    name: Name
    version: Name
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DeviceStatus(_Strict):
    """Retained on :func:`status_topic`: online at connect, offline as the last will."""

    schema_version: int = SCHEMA_VERSION
    fleet: DeviceId
    device: DeviceId
    epoch: Epoch = ""
    online: bool
    agent_version: Annotated[str, Field(max_length=64)] = ""
    models: list[ModelRef] = Field(default_factory=list, max_length=MAX_MODELS)
    rollout: Annotated[dict[str, Any] | None, FreeJson] = None
    since: Timestamp


class DesiredState(_Strict):
    """Retained on :func:`desired_topic`: the model version the fleet wants the device to run.

    The collector writes it when a rollout reaches the device (and writes the previous
    version back when a rollout is halted). The agent downloads ``url`` (resuming a cut-off
    download), checks ``sha256`` (of the bundle ``.tar``) and the bundle's signature, and
    deploys it with ``strategy`` and ``options`` (the agent's ``DeployOptions``). A shadow
    deployment stays in shadow until a desired state with ``promote`` true arrives.
    """

    schema_version: int = SCHEMA_VERSION
    rollout_id: Annotated[int, Field(ge=0, le=_MAX_INT)]
    model: Name
    version: Name
    # The bundle .tar to download; None when the device is expected to hold the version
    # already (a rollback to the version it ran before).
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size_bytes: NonNegInt | None = None
    url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    strategy: Literal["bluegreen", "canary", "shadow"] = "bluegreen"
    options: dict[str, float | int | str | None] = Field(default_factory=dict, max_length=32)
    promote: bool = False
    reason: Annotated[str, Field(max_length=500)] = ""
    issued_at: Timestamp


def encode_desired(state: DesiredState) -> bytes:
    """Plain JSON of a desired state (retained, read by people too)."""
    return state.model_dump_json().encode("utf-8")


def decode_desired(payload: bytes, max_bytes: int = 64 * 1024) -> DesiredState:
    """Read a desired-state message; :class:`TelemetryError` says why one is refused."""
    return _decode(DesiredState, payload, max_bytes, max_bytes)


# ---------------------------------------------------------------------------- encoding


def encode_window(window: TelemetryWindow, compression: Compression = "zstd") -> tuple[bytes, str]:
    """``(payload, content_type)`` of a window: compact JSON, compressed as asked."""
    raw = window.model_dump_json(exclude_none=True).encode("utf-8")
    return compress(raw, compression), CONTENT_TYPES[compression]


def compress(raw: bytes, compression: Compression) -> bytes:
    """Compress JSON bytes with ``compression``."""
    if compression == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor(level=3).compress(raw))
    if compression == "gzip":
        co = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return co.compress(raw) + co.flush()
    if compression == "none":
        return raw
    raise TelemetryError(f"unknown compression {compression!r} (zstd, gzip or none)")


def decompress(payload: bytes, max_bytes: int = MAX_DECODED_BYTES) -> bytes:
    """The JSON bytes of a payload, its compression detected from its first bytes.

    Raises :class:`TelemetryError` when the encoding is unknown, the data is corrupt, or it
    would decompress to more than ``max_bytes`` (a decompression bomb).
    """
    if payload.startswith(ZSTD_MAGIC):
        import zstandard

        dctx = _zstd_decompressor()
        try:
            declared = zstandard.frame_content_size(payload)
            if declared > max_bytes:
                raise TelemetryError(f"payload decompresses to more than {max_bytes} bytes")
            if declared > 0:
                # The frame says how big it is, and that is within bounds: one call.
                raw = dctx.decompress(payload)
            else:
                # Unknown size: read through a bounded stream, never trusting the frame.
                raw = dctx.stream_reader(io.BytesIO(payload)).read(max_bytes + 1)
        except zstandard.ZstdError as exc:
            raise TelemetryError(f"corrupt zstd payload: {exc}") from exc
    elif payload.startswith(GZIP_MAGIC):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload, max_bytes + 1)
        except zlib.error as exc:
            raise TelemetryError(f"corrupt gzip payload: {exc}") from exc
    elif payload.lstrip()[:1] == b"{":
        raw = payload
    else:
        raise TelemetryError("unknown payload encoding (expected zstd, gzip or a JSON object)")
    if len(raw) > max_bytes:
        raise TelemetryError(f"payload decompresses to more than {max_bytes} bytes")
    return bytes(raw)


_local = threading.local()


def _zstd_decompressor() -> Any:
    """One zstd decompression context per thread (a context is not thread-safe)."""
    dctx = getattr(_local, "zstd", None)
    if dctx is None:
        import zstandard

        dctx = _local.zstd = zstandard.ZstdDecompressor(max_window_size=1 << 23)
    return dctx


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "payload"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}"


def decode_window(
    payload: bytes,
    max_bytes: int = MAX_DECODED_BYTES,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> TelemetryWindow:
    """Read a telemetry message; :class:`TelemetryError` says why one is refused."""
    return _decode(TelemetryWindow, payload, max_bytes, max_payload_bytes)


def decode_status(payload: bytes, max_bytes: int = 64 * 1024) -> DeviceStatus:
    """Read a status message; :class:`TelemetryError` says why one is refused."""
    return _decode(DeviceStatus, payload, max_bytes, max_bytes)


def encode_status(status: DeviceStatus) -> bytes:
    """Plain JSON of a status message (small, retained, read by people too)."""
    return status.model_dump_json(exclude_none=True).encode("utf-8")


def _decode(
    model: type[_M],
    payload: bytes,
    max_bytes: int,
    max_payload_bytes: int,
) -> _M:
    if len(payload) > max_payload_bytes:
        raise TelemetryError(
            f"payload of {len(payload)} bytes is over the limit of {max_payload_bytes}"
        )
    raw = decompress(payload, max_bytes)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise TelemetryError(f"not valid JSON: {exc.errors()[0]['msg']}") from exc
        raise TelemetryError(_first_error(exc)) from exc
    except (ValueError, RecursionError) as exc:
        raise TelemetryError(f"unreadable payload: {exc}") from exc


def window_histograms(model: ModelWindow) -> Mapping[str, Histogram]:
    """The latency and batch size histograms of a model window as :class:`Histogram`."""
    return {
        "latency_ms": model.latency_ms.to_histogram(),
        "batch_size": model.batch_size.to_histogram(),
    }


def latency_histogram() -> Histogram:
    """An empty histogram on :data:`LATENCY_EDGES_MS`."""
    return Histogram.empty(np.asarray(LATENCY_EDGES_MS))


def batch_size_histogram() -> Histogram:
    """An empty histogram on :data:`BATCH_SIZE_EDGES`."""
    return Histogram.empty(np.asarray(BATCH_SIZE_EDGES))


__all__ = [
    "BATCH_SIZE_EDGES",
    "CONTENT_TYPES",
    "LATENCY_EDGES_MS",
    "MAX_BYTES",
    "MAX_CONFUSION_CELLS",
    "MAX_COUNT",
    "MAX_DECODED_BYTES",
    "MAX_LABEL_IDS",
    "MAX_PAYLOAD_BYTES",
    "MAX_TIMESTAMP",
    "MAX_VALUE",
    "MAX_WINDOW_S",
    "SCHEMA_VERSION",
    "SHARED_TELEMETRY_SUBSCRIPTION",
    "STATUS_SUBSCRIPTION",
    "TELEMETRY_SUBSCRIPTION",
    "WINDOW_SCHEMA_VERSION",
    "WINDOW_SCHEMA_VERSIONS",
    "Counts",
    "DesiredState",
    "DeviceStatus",
    "HistogramData",
    "LabelCounts",
    "LabelDigest",
    "ModelLabels",
    "ModelRef",
    "ModelWindow",
    "ProfileData",
    "ShadowWindow",
    "SpoolFigures",
    "SystemFigures",
    "TelemetryWindow",
    "alerts_topic",
    "batch_size_histogram",
    "compress",
    "decode_desired",
    "decode_status",
    "decode_window",
    "decompress",
    "desired_topic",
    "encode_desired",
    "encode_status",
    "encode_window",
    "events_topic",
    "label_digest",
    "latency_histogram",
    "parse_topic",
    "shared_telemetry_subscription",
    "status_subscription",
    "status_topic",
    "telemetry_subscription",
    "telemetry_topic",
    "validate_id",
]
