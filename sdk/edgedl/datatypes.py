"""The Open Inference Protocol's tensor datatypes and their NumPy dtypes.

Shared by the agent's codec and the Python client, so both sides name a tensor's type the
same way. Binary tensor data is little-endian, as the protocol requires.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_KIND = {(dt.kind, dt.itemsize): name for name, dt in NUMPY_DTYPES.items()}


def datatype_of(dtype: np.dtype[Any]) -> str | None:
    """The protocol's name for ``dtype`` in either byte order (``None`` when it has none)."""
    return _BY_KIND.get((dtype.kind, dtype.itemsize))
