"""The Open Inference Protocol (KServe v2) request and response bodies, and nothing else.

Both tensor encodings are read and written:

* JSON: ``{"name", "shape", "datatype", "data": [...]}`` with ``data`` flat (row-major) or
  nested;
* the binary tensor data extension: the body is a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by the raw little-endian bytes of the
  tensors whose ``parameters.binary_data_size`` is set, in the order they are listed.
  Outputs come back binary when the request sets ``parameters.binary_data_output`` or an
  output's ``parameters.binary_data`` (what ``tritonclient.http`` does).

Request parameters understood: ``timeout`` (microseconds, as Triton and tritonclient use it)
or ``timeout_ms``, which shorten the model's ``timeout_ms`` (a finite positive number, at most
:data:`MAX_TIMEOUT_S`); ``binary_data_output`` and an output's ``binary_data`` (booleans).
Any problem raises :class:`BadRequest` (HTTP 400) with a message saying what is wrong.

Flat number lists are read straight into arrays (:mod:`edgedl.agent.json_tensors`); the JSON
left for the parser to turn into Python objects is bounded by ``max_object_bytes``
(:class:`~edgedl.agent.request_budget.PayloadTooLarge`, HTTP 413, beyond it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.datatypes import NUMPY_DTYPES, datatype_of
from edgedl.errors import DataError, ServingError

from .json_tensors import (
    MalformedNumbers,
    NumberLists,
    WrongCount,
    dumps,
    loads,
    loads_request,
    output_data,
)
from .request_budget import PayloadTooLarge
from .shared_memory import RegionSlice, SharedMemoryError, SharedMemoryRegions, region_slice

Array = NDArray[Any]

MAX_TIMEOUT_S = 24 * 3600.0


class BadRequest(ServingError, DataError):
    """The request body is not a valid inference request."""

    status = 400
    kind = "bad_input"


@dataclass
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass
class InferenceRequest:
    """A decoded ``infer`` request."""

    id: str | None
    inputs: dict[str, Array]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    timeout_s: float | None
    output_regions: dict[str, RegionSlice] = field(default_factory=dict)  # outputs to write there


def decode_request(
    body: bytes,
    header_length: int | None,
    datatypes: Mapping[str, str],
    max_object_bytes: int | None = None,
    regions: SharedMemoryRegions | None = None,
) -> InferenceRequest:
    """Parse an infer request; ``datatypes`` maps each model input to the datatype it takes.

    ``max_object_bytes`` bounds the JSON decoded into Python objects (everything but flat
    number lists); ``None``: no bound. ``regions``: the shared memory regions inputs may be
    read from and outputs written to (``None``: shared memory is off).
    """
    if not body:
        raise BadRequest("empty request body: expected a JSON inference request")
    if header_length is not None:
        if header_length <= 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length is {header_length} "
                f"but the body has {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    doc, lists = _load_json(header, max_object_bytes)
    if not isinstance(doc, dict):
        raise BadRequest("the request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest('the request needs "inputs": a non-empty list of tensors')
    inputs: dict[str, Array] = {}
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        arr, used = _decode_tensor(tensor, i, binary, offset, datatypes, lists, regions)
        inputs[str(tensor["name"])] = arr
        offset += used
    if offset != len(binary):
        raise BadRequest(
            f"the body holds {len(binary)} bytes of binary tensor data "
            f"but the inputs' binary_data_size add up to {offset}"
        )
    params = _parameters(doc, "request")
    outputs = None
    output_regions: dict[str, RegionSlice] = {}
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list):
            raise BadRequest('"outputs" must be a list')
        outputs = []
        for out in doc["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise BadRequest('every requested output needs a "name"')
            what = f"output {out['name']!r}"
            out_params = _parameters(out, what)
            outputs.append(RequestedOutput(out["name"], _flag(out_params, "binary_data")))
            where = region_slice(out_params, what)
            if where is not None:
                shared(regions).check(where)
                output_regions[out["name"]] = where
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, (str, int)):
        raise BadRequest(f'"id" must be a string, got {type(request_id).__name__}')
    return InferenceRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_output=_flag(params, "binary_data_output"),
        timeout_s=request_timeout(params),
        output_regions=output_regions,
    )


def shared(regions: SharedMemoryRegions | None) -> SharedMemoryRegions:
    """``regions``; raises :class:`SharedMemoryError` when shared memory is off (``None``)."""
    if regions is None:
        raise SharedMemoryError("shared memory is off: set server.shared_memory = true to use it")
    return regions


def _load_json(header: bytes, max_object_bytes: int | None) -> tuple[Any, NumberLists]:
    try:
        doc, lists, parsed = loads_request(header, max_object_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON in the request: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("malformed JSON in the request: nested too deeply") from exc
    if max_object_bytes is not None and parsed > max_object_bytes:
        raise PayloadTooLarge(
            f"the request's JSON holds {parsed} bytes besides flat lists of numbers, "
            f"over the limit of {max_object_bytes} (server.max_json_object_bytes): send "
            "large tensors as flat lists of numbers or as binary tensor data"
        )
    return doc, lists


def _flag(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise BadRequest(f"parameter {key!r} must be true or false, got {value!r}")
    return value


def _parameters(doc: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = doc.get("parameters", {})
    if not isinstance(params, dict):
        raise BadRequest(f'"parameters" of the {where} must be an object')
    return params


def request_timeout(params: Mapping[str, Any]) -> float | None:
    """The deadline a request's parameters ask for, in seconds: ``timeout_ms``, or ``timeout``
    in microseconds (Triton's); ``None`` when neither is given."""
    for key, scale in (("timeout_ms", 1e-3), ("timeout", 1e-6)):
        if key in params:
            value = params[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadRequest(f"parameter {key!r} must be a positive number, got {value!r}")
            seconds = float(value) * scale
            if not (0 < seconds <= MAX_TIMEOUT_S):  # also NaN
                raise BadRequest(
                    f"parameter {key!r} must be a positive number of at most "
                    f"{MAX_TIMEOUT_S / scale:.0f}, got {value!r}"
                )
            return seconds
    return None


def _decode_tensor(
    tensor: Any,
    index: int,
    binary: memoryview,
    offset: int,
    datatypes: Mapping[str, str],
    lists: NumberLists,
    regions: SharedMemoryRegions | None,
) -> tuple[Array, int]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise BadRequest(f'input #{index} needs a "name"')
    name = tensor["name"]
    if name not in datatypes:
        raise BadRequest(f"unknown input {name!r} (the model's inputs: {sorted(datatypes)})")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadRequest(f'input {name!r}: "shape" must be a list of non-negative integers')
    datatype = tensor.get("datatype")
    expected = datatypes[name]
    if datatype != expected:
        raise BadRequest(f"input {name!r}: expected datatype {expected}, got {datatype!r}")
    dtype = NUMPY_DTYPES[expected]
    count = math.prod(shape)
    params = _parameters(tensor, f"input {name!r}")
    where = region_slice(params, f"input {name!r}")
    if where is not None:
        return shared(regions).read(where, name, shape, dtype), 0
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize:
            raise BadRequest(
                f"input {name!r}: binary_data_size is {size!r}, but shape {shape} of "
                f"{expected} needs {count * dtype.itemsize} bytes"
            )
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: the body ends before its {size} bytes of data")
        return np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape), size
    if "data" not in tensor:
        raise BadRequest(f'input {name!r} has neither "data" nor binary_data_size')
    data = tensor["data"]
    numbers = lists.lookup(data)
    try:
        parsed = numbers.parse(dtype, count) if numbers is not None else None
    except MalformedNumbers as exc:
        raise BadRequest(f"input {name!r}: malformed JSON in its data: {exc}") from None
    except WrongCount as exc:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values, the data holds {exc.held}"
        ) from None
    if parsed is not None:
        arr: Array = parsed
    else:
        if numbers is not None:  # not plain numbers of its dtype: the JSON parser says why
            data = _json_list(bytes(numbers), name, lists.object_limit)
        if not isinstance(data, list):
            raise BadRequest(f'input {name!r}: "data" must be a list of numbers')
        try:
            arr = _array_of_numbers(data, dtype)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise BadRequest(f"input {name!r}: data is not a list of {expected} numbers") from exc
    if arr.size != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values, the data holds {arr.size}"
        )
    return arr.reshape(shape), 0


def _array_of_numbers(data: list[Any], dtype: np.dtype[Any]) -> Array:
    """``data`` as an array of ``dtype``; ValueError unless it holds only numbers (booleans for
    BOOL) that the dtype represents: no strings, nulls or ragged lists, no fractions for an
    integer type, no values out of its range."""
    parsed = np.array(data)
    allowed = "b" if dtype.kind == "b" else ("iu" if dtype.kind in "iu" else "iuf")
    if dtype.kind in "iu" and parsed.dtype.kind == "f" and np.array_equal(parsed, parsed // 1):
        allowed += "f"  # 1.0 for an integer: the number one
    if parsed.dtype.kind not in allowed:
        raise ValueError(f"{parsed.dtype} values")
    if dtype.kind in "iu" and parsed.size:
        info = np.iinfo(dtype)
        if parsed.min() < info.min or parsed.max() > info.max:
            raise OverflowError(f"values beyond {dtype}'s range")
    return np.array(parsed, dtype=dtype)


def _json_list(text: bytes, name: str, limit: int | None) -> Any:
    if limit is not None and len(text) > limit:
        raise PayloadTooLarge(
            f"input {name!r}: its data ({len(text)} bytes) cannot be read as numbers of its "
            f"datatype directly, and is over server.max_json_object_bytes ({limit}) to read as "
            "JSON: send it as binary tensor data"
        )
    try:
        return loads(b"[" + text + b"]")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"input {name!r}: malformed JSON in its data: {exc}") from exc


def encode_response(
    model_name: str,
    model_version: str,
    request: InferenceRequest,
    outputs: Mapping[str, Array],
    regions: SharedMemoryRegions | None = None,
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary data, the JSON header's length.

    An output the request asked for in a shared memory region is written there, and its
    entry carries the region's parameters instead of data."""
    if request.outputs is None:
        wanted = [RequestedOutput(name, request.binary_output) for name in outputs]
    else:
        wanted = request.outputs
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    finite = True
    for out in wanted:
        if out.name not in outputs:
            raise BadRequest(
                f"unknown output {out.name!r} (the model's outputs: {sorted(outputs)})"
            )
        arr = np.asarray(outputs[out.name])
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": datatype_of(arr.dtype) or "FP32",
            "shape": list(arr.shape),
        }
        where = request.output_regions.get(out.name)
        if where is not None:
            shared(regions).write(where, out.name, arr)
            entry["parameters"] = {
                "shared_memory_region": where.region,
                "shared_memory_byte_size": arr.nbytes,
                **({"shared_memory_offset": where.offset} if where.offset else {}),
            }
        elif out.binary:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"], entry_finite = output_data(arr)
            finite = finite and entry_finite
        tensors.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = tensors
    header = dumps(doc, finite)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
