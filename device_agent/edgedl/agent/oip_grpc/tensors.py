"""Tensors between the gRPC protocol's messages and NumPy arrays, both encodings.

* raw: ``raw_input_contents`` holds one little-endian, row-major blob per input, in the order
  of ``inputs`` (what ``tritonclient.grpc`` sends); the arrays are read straight from those
  bytes. The answer then carries ``raw_output_contents`` too.
* typed: each input's ``contents`` holds the values in the field of its datatype
  (``fp32_contents`` for FP32, ``int_contents`` for INT8/16/32 ...); the answer then uses
  ``contents`` as well.

A request mixing both, a datatype other than the model's, a shape whose element count does
not match the data, or an unknown input or output raises
:class:`~edgedl.agent.oip.BadRequest` saying what is wrong. Request parameters understood:
``timeout`` (microseconds, as Triton's clients send it) and ``timeout_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.datatypes import NUMPY_DTYPES, datatype_of

from ..oip import BadRequest, InferenceRequest, RequestedOutput, request_timeout, shared
from ..shared_memory import RegionSlice, SharedMemoryRegions, region_slice
from .messages import ModelInferResponse

Array = NDArray[Any]

# The typed field holding each datatype's values (FP16 has none: it travels raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

# The NumPy dtype of each typed field's values as the protocol defines the field.
_FIELD_DTYPES = {
    "bool_contents": np.dtype(np.bool_),
    "int_contents": np.dtype(np.int32),
    "int64_contents": np.dtype(np.int64),
    "uint_contents": np.dtype(np.uint32),
    "uint64_contents": np.dtype(np.uint64),
    "fp32_contents": np.dtype(np.float32),
    "fp64_contents": np.dtype(np.float64),
}


def decode_infer_request(
    request: Any, datatypes: Mapping[str, str], regions: SharedMemoryRegions | None = None
) -> InferenceRequest:
    """The inputs, wanted outputs and deadline of a ``ModelInferRequest``.

    ``datatypes`` maps each model input to the datatype it takes; ``regions``: the shared
    memory regions inputs may point at (``None``: shared memory is off). Raw requests get raw
    answers (``binary_output``).
    """
    if not request.inputs:
        raise BadRequest("the request has no inputs")
    raw = list(request.raw_input_contents)
    in_regions = [
        region_slice(parameter_values(t.parameters), f"input {t.name!r}") for t in request.inputs
    ]
    carried = in_regions.count(None)
    if raw and len(raw) != carried:
        raise BadRequest(
            f"raw_input_contents holds {len(raw)} tensors but the request lists "
            f"{carried} inputs not in shared memory: give one raw blob per input, in order"
        )
    inputs: dict[str, Array] = {}
    blobs = iter(raw)
    for tensor, where in zip(request.inputs, in_regions, strict=True):
        name = tensor.name
        if name not in datatypes:
            raise BadRequest(f"unknown input {name!r} (the model's inputs: {sorted(datatypes)})")
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        expected = datatypes[name]
        if tensor.datatype != expected:
            raise BadRequest(
                f"input {name!r}: expected datatype {expected}, got {tensor.datatype!r}"
            )
        shape = list(tensor.shape)
        if not shape or any(d < 0 for d in shape):
            raise BadRequest(f"input {name!r}: the shape must be non-negative sizes, got {shape}")
        if where is not None:
            arr = shared(regions).read(where, name, shape, NUMPY_DTYPES[expected])
        elif raw:
            if tensor.HasField("contents"):
                raise BadRequest(
                    f"input {name!r} has contents although the request uses "
                    "raw_input_contents: use one or the other for all inputs"
                )
            arr = _from_raw(name, next(blobs), shape, NUMPY_DTYPES[expected])
        else:
            arr = _from_contents(name, tensor, shape, expected)
        inputs[name] = arr
    output_regions: dict[str, RegionSlice] = {}
    for out in request.outputs:
        where = region_slice(parameter_values(out.parameters), f"output {out.name!r}")
        if where is not None:
            shared(regions).check(where)
            output_regions[out.name] = where
    binary = bool(raw) or not any(t.HasField("contents") for t in request.inputs)
    timeout_s = request_timeout(parameter_values(request.parameters))
    return InferenceRequest(
        id=request.id or None,
        inputs=inputs,
        outputs=[RequestedOutput(o.name, binary) for o in request.outputs] or None,
        binary_output=binary,
        timeout_s=timeout_s,
        output_regions=output_regions,
    )


def parameter_values(parameters: Any) -> dict[str, Any]:
    """A ``map<string, InferParameter>`` as plain values (bool, int, str or float)."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        which = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, which) if which is not None else None
    return values


def _from_raw(name: str, blob: bytes | memoryview, shape: list[int], dtype: np.dtype[Any]) -> Array:
    needed = math.prod(shape) * dtype.itemsize
    if len(blob) != needed:
        raise BadRequest(
            f"input {name!r}: shape {shape} of {datatype_of(dtype)} needs {needed} bytes, "
            f"its raw contents hold {len(blob)}"
        )
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def _from_contents(name: str, tensor: Any, shape: list[int], datatype: str) -> Array:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"input {name!r}: {datatype} travels only as raw_input_contents")
    values = getattr(tensor.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadRequest(
            f"input {name!r}: shape {shape} needs {count} values, its {field} holds {len(values)}"
        )
    dtype = NUMPY_DTYPES[datatype]
    arr = np.array(values, dtype=_FIELD_DTYPES[field])  # the field's own type: nothing lost
    if dtype.kind in "iu" and arr.dtype != dtype and arr.size:
        limits = np.iinfo(dtype)
        if arr.min() < limits.min or arr.max() > limits.max:
            raise BadRequest(
                f"input {name!r}: {field} holds values outside the range of {datatype} "
                f"[{limits.min}, {limits.max}]"
            )
    return arr.astype(dtype, copy=False).reshape(shape)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferenceRequest,
    outputs: Mapping[str, Array],
    regions: SharedMemoryRegions | None = None,
) -> Any:
    """A ``ModelInferResponse`` with the wanted outputs: raw when the request was raw (or an
    output is FP16, which has no typed field), typed ``contents`` otherwise; an output asked
    for in a shared memory region is written there (and its raw entry left empty)."""
    wanted = [o.name for o in request.outputs] if request.outputs is not None else list(outputs)
    in_shm = request.output_regions
    tensors: list[tuple[str, str, Array]] = []
    for name in wanted:
        if name not in outputs:
            raise BadRequest(f"unknown output {name!r} (the model's outputs: {sorted(outputs)})")
        arr = np.asarray(outputs[name])
        datatype = datatype_of(arr.dtype) or "FP32"
        tensors.append((name, datatype, np.ascontiguousarray(arr, NUMPY_DTYPES[datatype])))
    raw = request.binary_output or any(
        d not in CONTENTS_FIELD for n, d, _ in tensors if n not in in_shm
    )
    response = ModelInferResponse(model_name=model_name, model_version=model_version)
    if request.id is not None:
        response.id = request.id
    for name, datatype, arr in tensors:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=arr.shape)
        if name in in_shm:
            where = in_shm[name]
            shared(regions).write(where, name, arr)
            tensor.parameters["shared_memory_region"].string_param = where.region
            tensor.parameters["shared_memory_byte_size"].int64_param = arr.nbytes
            if where.offset:
                tensor.parameters["shared_memory_offset"].int64_param = where.offset
            if raw:
                response.raw_output_contents.append(b"")  # keeps raw entries in output order
        elif raw:
            response.raw_output_contents.append(arr.tobytes())
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
    return response
