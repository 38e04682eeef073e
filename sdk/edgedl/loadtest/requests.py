"""Open Inference Protocol infer requests, prepared once as bytes before the load starts.

Plain v2 JSON by default (what the agent, Triton and MLServer all accept); the binary
tensor data extension on request. Inputs come from a ``.npy``/``.npz`` file (one request
per sample, batch 1) or, without one, are random in [0, 1) shaped by the model's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import DataError

from .http import Endpoint

_NUMPY = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2", "INT8": "i1", "UINT8": "u1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8"}  # fmt: skip


def load_inputs(path: Path) -> NDArray[Any]:
    """Samples from ``.npy`` (the array) or ``.npz`` (its ``x``), batch first."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read inputs {path}: {exc}") from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "x" not in loaded.files:
                raise DataError(f"{path}: no array 'x'")
            x = loaded["x"]
    else:
        x = loaded
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{path}: no samples")
    return np.asarray(x)


def sample_shape(
    metadata: dict[str, Any], x: NDArray[Any] | None, input_name: str | None = None
) -> tuple[str, str, list[int]]:
    """The first input's name, datatype and per-request shape (batch 1).

    A server whose metadata lists no inputs (MLServer, unless a model's settings declare
    them) is loaded with the input named ``input_name``, typed and shaped as the samples ``x``.
    """
    inputs = metadata.get("inputs") if isinstance(metadata, dict) else None
    if not inputs:
        if input_name is None or x is None:
            raise DataError(
                "the server's model metadata lists no inputs: give --input-name NAME and "
                "--inputs FILE (MLServer lists inputs only when the model's settings declare them)"
            )
        datatype = next((k for k, v in _NUMPY.items() if np.dtype(v) == x.dtype), None)
        if datatype is None:
            raise DataError(f"inputs of dtype {x.dtype} cannot be sent; convert them to float32")
        return input_name, datatype, [1, *x.shape[1:]]
    try:
        spec = next(i for i in inputs if input_name in (None, i["name"]))
        name, datatype, shape = str(spec["name"]), str(spec["datatype"]), list(spec["shape"])
    except StopIteration as exc:
        raise DataError(f"the model has no input named {input_name!r}") from exc
    except (KeyError, IndexError, TypeError) as exc:
        raise DataError(f"model metadata has no usable inputs: {metadata!r:.200}") from exc
    if datatype not in _NUMPY:
        raise DataError(f"input {name!r} has datatype {datatype}, which loadtest cannot send")
    if x is not None:
        return name, datatype, [1, *x.shape[1:]]
    return name, datatype, [1, *[d if d > 0 else 1 for d in shape[1:]]]


def infer_requests(
    endpoint: Endpoint,
    model: str,
    metadata: dict[str, Any],
    x: NDArray[Any] | None,
    binary: bool = False,
    count: int = 64,
    input_name: str | None = None,
) -> list[bytes]:
    """Prepared ``POST /v2/models/MODEL/infer`` requests, one per sample (``count`` random)."""
    name, datatype, shape = sample_shape(metadata, x, input_name)
    if x is None:
        rng = np.random.default_rng(0)
        x = rng.random((count, *shape[1:])).astype(_NUMPY[datatype])
    path = f"/v2/models/{model}/infer"
    out = []
    for sample in x:
        arr = np.asarray(sample, dtype=_NUMPY[datatype]).reshape(shape)
        if binary:
            blob = arr.tobytes()
            head = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                           "parameters": {"binary_data_size": len(blob)}}]}
                              ).encode()  # fmt: skip
            headers = (f"Inference-Header-Content-Length: {len(head)}\r\n"
                       "Content-Type: application/octet-stream\r\n")  # fmt: skip
            out.append(endpoint.request("POST", path, head + blob, headers))
        else:
            body = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                           "data": arr.ravel().tolist()}]}).encode()  # fmt: skip
            out.append(endpoint.request("POST", path, body, "Content-Type: application/json\r\n"))
    return out
