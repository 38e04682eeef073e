"""The JSON of infer requests and responses, without a Python object per number.

A JSON parser turns every number of a tensor's ``"data"`` into a Python object (about 32 bytes
for a float, plus the list's pointer), so a 50 MiB request costs over 500 MiB. Here each
``"data": [...]`` that is a flat list of numbers is cut out of the text before parsing and
parsed by NumPy straight into an array of the input's dtype; only the rest (names, shapes,
parameters: a few hundred bytes) goes through the JSON parser (orjson, falling back to the
standard library for what orjson refuses, such as ``NaN``). Lists that are nested, hold
anything but numbers, or are short take the ordinary path.

Responses are written by orjson, which serialises NumPy arrays directly; outputs holding NaN
or Inf are written by the standard library (``NaN``, ``Infinity``), as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

Array = NDArray[Any]

_DATA_LIST = re.compile(rb'(?<!\\)"data"[ \t\r\n]*:[ \t\r\n]*\[')
_NUMBER_BYTES = b"0123456789+-.eE, "
_MARKER = "\x00edgedl-data:"
_SHORTEST_CUT = 4096  # shorter lists cost little as Python objects: left to the parser

# dtypes parsed from text by NumPy, and the dtype the text is parsed as.
_PARSED_AS: dict[str, Any] = {
    "float16": np.float64,
    "float32": np.float32,
    "float64": np.float64,
    "int8": np.int64,
    "int16": np.int64,
    "int32": np.int64,
    "int64": np.int64,
    "uint8": np.int64,
    "uint16": np.int64,
    "uint32": np.int64,
}
_ORJSON_DTYPES = frozenset(_PARSED_AS) | {"bool", "uint64"}


class NumberLists:
    """The flat number lists cut out of a request's JSON, by the marker left in their place."""

    def __init__(self, texts: list[bytes], object_limit: int | None = None) -> None:
        self.texts = texts
        self.object_limit = object_limit  # the most of a list's text to parse as JSON

    def lookup(self, value: Any) -> bytes | None:
        """The list text a ``"data"`` value stands for, or ``None`` when it is not a marker."""
        if not isinstance(value, str) or not value.startswith(_MARKER):
            return None
        index = value[len(_MARKER) :]
        if not index.isdigit() or int(index) >= len(self.texts):
            return None
        return self.texts[int(index)]


def loads_request(text: bytes, object_limit: int | None) -> tuple[Any, NumberLists, int]:
    """Parse a request's JSON; returns the document, its cut-out lists, and the bytes parsed.

    The last figure is how much of the text went through the JSON parser (what becomes Python
    objects), so the caller can bound it. Raises what :func:`loads` raises.
    """
    texts: list[bytes] = []
    parts: list[bytes] = []
    pos = 0
    search_from = 0
    while True:
        match = _DATA_LIST.search(text, search_from)
        if match is None:
            break
        start = match.end()
        end = text.find(b"]", start)
        if end < 0:
            break
        search_from = end + 1
        if end - start < _SHORTEST_CUT:
            continue
        numbers = text[start:end]
        if numbers.translate(None, _NUMBER_BYTES):
            continue  # not only numbers: the parser reads it (and says what is wrong)
        parts.append(text[pos : start - 1])
        parts.append(json.dumps(f"{_MARKER}{len(texts)}").encode())
        texts.append(numbers)
        pos = end + 1
    if texts:
        parts.append(text[pos:])
        rest = b"".join(parts)
    else:
        rest = text
    return loads(rest), NumberLists(texts, object_limit), len(rest)


def loads(text: bytes) -> Any:
    """orjson, or the standard library for what orjson refuses (``NaN``, huge integers).

    Raises :class:`json.JSONDecodeError`, :class:`UnicodeDecodeError` or :class:`RecursionError`.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def parse_numbers(text: bytes, dtype: np.dtype[Any]) -> Array | None:
    """The numbers of a flat list's text (between the brackets) as a 1-D array of ``dtype``.

    ``None`` when NumPy cannot read it exactly (spacing other than ``", "``, a malformed or
    out-of-range number, an unsupported dtype): the caller then parses it as JSON, which gives
    the precise error. NumPy is a little more lenient than JSON about single numbers: it also
    reads ``+1``, ``.5``, ``1.`` and ``01``.
    """
    parse_as = _PARSED_AS.get(dtype.name)
    if parse_as is None or text.count(b" ") != text.count(b", "):
        return None
    try:
        arr: Array = np.fromstring(text, dtype=parse_as, sep=",")
    except ValueError:
        return None
    if arr.size != text.count(b",") + 1:
        return None  # NumPy stopped early: something it could not read
    if parse_as is np.int64 and dtype != np.int64:
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            return None
    return arr.astype(dtype, copy=False)


def output_data(arr: Array) -> tuple[Any, bool]:
    """An output's ``"data"`` for :func:`dumps`, and whether it is finite (orjson can write it)."""
    flat = np.ascontiguousarray(arr).ravel()
    if flat.dtype.name not in _ORJSON_DTYPES:
        return flat.tolist(), True
    if flat.dtype.kind == "f" and not np.isfinite(flat).all():
        return flat.tolist(), False
    return flat, True


def dumps(doc: Mapping[str, Any], finite: bool) -> bytes:
    """A response document as JSON; NumPy arrays inside are written without Python floats."""
    if finite:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(doc, allow_nan=True, default=_tolist).encode()


def _tolist(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
