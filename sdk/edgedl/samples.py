"""Samples for retraining: what an agent with ``[sampling]`` on publishes, and how.

A sampled inference travels as one :class:`SampleMessage` (JSON) on :func:`samples_topic`,
``edgedl/v1/{fleet}/{device}/samples``: the input tensors of one sample of a request, the
model and version that answered, the predicted class and its top-1 confidence, the time and
why it was chosen. A true label that reaches the agent later (``POST /v2/labels``) follows as a
:class:`SampleLabel` on the same topic, naming the sample by its id. Both are published at
QoS 1 from a bounded spool on disk, so the collector may see one twice: the sample id makes
the second a no-op.
"""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgedl.errors import TelemetryError
from edgedl.telemetry import TOPIC_ROOT, validate_id

#: Largest sample message the collector accepts (inputs included).
MAX_SAMPLE_BYTES = 1_000_000
#: Why a sample was chosen.
Reason = Literal["rate", "low_confidence", "drift"]
_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
SampleId = Annotated[str, Field(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9._:-]+$")]


def samples_topic(fleet: str, device: str) -> str:
    """``edgedl/v1/{fleet}/{device}/samples``: :class:`SampleMessage` and :class:`SampleLabel`."""
    return f"{TOPIC_ROOT}/{validate_id(fleet, 'fleet')}/{validate_id(device, 'device')}/samples"


def samples_subscription(fleet: str = "+") -> str:
    """The samples of one fleet (or of all, ``+``)."""
    fleet = fleet if fleet == "+" else validate_id(fleet, "fleet")
    return f"{TOPIC_ROOT}/{fleet}/+/samples"


class SampleTensor(BaseModel):
    """One input tensor of one sample: dtype, shape and its bytes (base64, little-endian)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dtype: Literal[_DTYPES]  # type: ignore[valid-type]
    shape: list[Annotated[int, Field(ge=0, le=1_000_000)]] = Field(max_length=8)
    data: str

    @classmethod
    def of(cls, array: NDArray[Any]) -> SampleTensor:
        """The tensor of ``array``."""
        a = np.ascontiguousarray(array)
        return cls(
            dtype=str(a.dtype),
            shape=list(a.shape),
            data=base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode(),
        )

    @model_validator(mode="after")
    def _bytes_fit_the_shape(self) -> SampleTensor:
        self.array()
        return self

    def array(self) -> NDArray[Any]:
        """The tensor as a numpy array (ValueError when bytes and shape disagree)."""
        try:
            raw = base64.b64decode(self.data, validate=True)
        except ValueError:
            raise ValueError("data is not base64") from None
        dtype = np.dtype(self.dtype).newbyteorder("<")
        count = int(np.prod(self.shape)) if self.shape else 1
        if len(raw) != count * dtype.itemsize:
            raise ValueError(
                f"a tensor of shape {self.shape} and {self.dtype} needs "
                f"{count * dtype.itemsize} bytes, got {len(raw)}"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape).astype(self.dtype)


class SampleMessage(BaseModel):
    """One sampled inference, as it leaves the device."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    kind: Literal["sample"] = "sample"
    id: SampleId
    fleet: str
    device: str
    model: str = Field(max_length=128)
    version: str = Field(max_length=128)
    time: float
    reason: Reason
    prediction_id: str | None = Field(default=None, max_length=160)
    index: int = Field(default=0, ge=0)
    """The sample's position in its request's batch."""
    predicted: int | None = Field(default=None, ge=0)
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    label: int | None = Field(default=None, ge=0)
    inputs: dict[Annotated[str, Field(max_length=128)], SampleTensor] = Field(max_length=16)
    dropped: int = Field(default=0, ge=0)
    """Samples this device chose but had to drop (disk bound, full queue) since the last one."""


class SampleLabel(BaseModel):
    """The true label of a sample sent earlier, which reached the agent after it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: Literal[1] = 1
    kind: Literal["label"] = "label"
    id: SampleId
    fleet: str
    device: str
    label: int = Field(ge=0)


def encode_sample(message: SampleMessage | SampleLabel) -> bytes:
    """The message as it is published (compact JSON)."""
    return json.dumps(message.model_dump(mode="json"), separators=(",", ":")).encode()


def decode_sample(payload: bytes, max_bytes: int = MAX_SAMPLE_BYTES) -> SampleMessage | SampleLabel:
    """A received samples-topic message; :class:`TelemetryError` for anything malformed."""
    if len(payload) > max_bytes:
        raise TelemetryError(f"sample message of {len(payload)} bytes is over {max_bytes}")
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TelemetryError(f"sample message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise TelemetryError("sample message is not a JSON object")
    try:
        if data.get("kind") == "label":
            return SampleLabel.model_validate(data)
        return SampleMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TelemetryError(f"invalid sample message: {where}: {first['msg']}") from None


__all__ = [
    "MAX_SAMPLE_BYTES",
    "Reason",
    "SampleLabel",
    "SampleMessage",
    "SampleTensor",
    "decode_sample",
    "encode_sample",
    "samples_subscription",
    "samples_topic",
]
