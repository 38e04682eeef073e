"""The JSON of infer requests and responses, without a Python object per number.

A JSON parser turns every number of a tensor's ``"data"`` into a Python object (about 32 bytes
for a float, plus the list's pointer), so a 50 MiB request costs over 500 MiB, and building an
array from those objects takes longer than parsing them. Here each ``"data": [...]`` that is a
flat list is cut out of the text before parsing (the text is not copied: the lists are kept
as spans of it) and read by simdjson (``pysimdjson``) straight into an array of the input's
dtype, a chunk of :data:`CHUNK_BYTES` at a time, so the parser's own memory stays bounded.
simdjson parses JSON numbers exactly (the double nearest to the text, as the standard library
does) and strictly (``+1``, ``.5``, ``01``, ``1,,2`` and a trailing comma are malformed);
float32 and float16 inputs are the float64 values rounded, as ``np.array(json.loads(...),
dtype)`` gives. Only the rest (names, shapes, parameters: a few hundred bytes) goes through
the JSON parser (orjson, falling back to the standard library for what orjson refuses, such
as ``NaN``). Lists that are nested, hold anything but numbers (``NaN``, strings, booleans), or
are short take the ordinary path.

Responses are written by orjson, which serialises NumPy arrays directly; outputs holding NaN
or Inf are written by the standard library (``NaN``, ``Infinity``), as before.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson
from numpy.typing import NDArray

Array = NDArray[Any]

CHUNK_BYTES = 1 << 20  # of a number list's text parsed at once (simdjson's tape: ~1.6x that)
_DATA_LIST = re.compile(rb'(?<!\\)"data"[ \t\r\n]*:[ \t\r\n]*\[')
_NUMBER_BYTES = b"0123456789+-.eE, \t\r\n"
_MARKER = "\x00edgedl-data:"
_SHORTEST_CUT = 4096  # shorter lists cost little as Python objects: left to the parser

# dtypes read by simdjson, and what it reads them as: "d" float64, "i" int64.
_READ_AS: dict[str, str] = {
    "float16": "d",
    "float32": "d",
    "float64": "d",
    "int8": "i",
    "int16": "i",
    "int32": "i",
    "int64": "i",
    "uint8": "i",
    "uint16": "i",
    "uint32": "i",
}
_ORJSON_DTYPES = frozenset(_READ_AS) | {"bool", "uint64"}
_parsers = threading.local()  # a simdjson parser serves one document at a time: one per thread


class MalformedNumbers(ValueError):
    """A list of number characters that is not valid JSON (``1,,2``, ``1 2``, ``01``)."""


class WrongCount(ValueError):
    """A list of numbers of another length than its tensor's shape needs."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the data holds {held} values")
        self.held = held


@dataclass(frozen=True)
class NumberList:
    """A flat list's text, between its brackets: ``text[start:end]``, kept uncopied."""

    text: bytes
    start: int
    end: int

    def __bytes__(self) -> bytes:
        return bytes(memoryview(self.text)[self.start : self.end])

    def __len__(self) -> int:
        return self.end - self.start

    def parse(self, dtype: np.dtype[Any], count: int) -> Array | None:
        """The numbers as a 1-D array of ``dtype``, parsed :data:`CHUNK_BYTES` at a time.

        ``count``: how many the tensor's shape needs; the array is that long when the list
        is, else :class:`WrongCount` says how many it holds. ``None`` when the list holds more
        than numbers (``NaN``, strings, nested lists), numbers the dtype cannot hold
        (fractions or out-of-range values for an integer type), or ``dtype`` is not one
        simdjson reads: the caller then parses it as JSON, which gives the precise error.
        Raises :class:`MalformedNumbers` for number text that is not JSON.
        """
        read_as = _READ_AS.get(dtype.name)
        if read_as is None:
            return None
        text, end = self.text, self.end
        out: Array = np.empty(count, dtype)
        view = memoryview(text)
        parser = _parser()
        filled = 0
        pos = self.start
        while pos < end:
            cut = text.find(b",", pos + CHUNK_BYTES, end) if pos + CHUNK_BYTES < end else -1
            stop = end if cut < 0 else cut
            chunk = bytearray(b"[")
            chunk += view[pos:stop]
            chunk += b"]"
            if chunk.find(b"[", 1) >= 0:
                return None  # nested further in: the parser reads it
            values = _read(parser, chunk, read_as, pos - self.start)
            if values is None:
                return None
            if read_as == "i" and dtype != np.int64 and values.size:
                info = np.iinfo(dtype)
                if values.min() < info.min or values.max() > info.max:
                    return None
            if filled + values.size > count:
                raise WrongCount(text.count(b",", self.start, end) + 1)
            with np.errstate(over="ignore"):  # beyond float32's range: inf, as a cast gives
                out[filled : filled + values.size] = values
            filled += values.size
            pos = stop + 1
        last = text.rfind(b",", self.start, end)
        if last >= 0 and not text[last + 1 : end].strip():  # "1, 2, ]" cut at its last comma
            raise MalformedNumbers("a number is missing at the end of the list")
        if filled != count:
            raise WrongCount(filled)
        return out


def _parser() -> Any:
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def _read(parser: Any, chunk: bytearray, read_as: str, offset: int) -> Array | None:
    """One chunk ``[n, n, ...]`` as int64 or float64, without a Python object per number."""
    try:
        doc = parser.parse(chunk)
    except RuntimeError:  # an integer beyond 64 bits: the JSON parser reads it
        return None
    except ValueError as exc:
        if chunk.translate(None, _NUMBER_BYTES) != b"[]":
            return None  # NaN, a string, ...: not only numbers
        reason = str(exc).split(":", 1)[-1].split(".", 1)[0].strip()
        raise MalformedNumbers(f"{reason} (in the list's bytes from {offset})") from None
    try:
        values: Array = np.frombuffer(doc.as_buffer(of_type=read_as), _NUMPY_OF[read_as])
    except TypeError:  # not only numbers, a fraction where integers were asked for, ...
        return None
    finally:
        del doc  # the parser serves the next chunk only once this document is gone
    return values


_NUMPY_OF = {"d": np.float64, "i": np.int64}


class NumberLists:
    """The flat number lists cut out of a request's JSON, by the marker left in their place."""

    def __init__(self, lists: list[NumberList], object_limit: int | None = None) -> None:
        self.lists = lists
        self.object_limit = object_limit  # the most of a list's text to parse as JSON

    def lookup(self, value: Any) -> NumberList | None:
        """The list a ``"data"`` value stands for, or ``None`` when it is not a marker."""
        if not isinstance(value, str) or not value.startswith(_MARKER):
            return None
        index = value[len(_MARKER) :]
        if not index.isdigit() or int(index) >= len(self.lists):
            return None
        return self.lists[int(index)]


def loads_request(text: bytes, object_limit: int | None) -> tuple[Any, NumberLists, int]:
    """Parse a request's JSON; returns the document, its cut-out lists, and the bytes parsed.

    The last figure is how much of the text went through the JSON parser (what becomes Python
    objects), so the caller can bound it. Raises what :func:`loads` raises.
    """
    lists: list[NumberList] = []
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
        if end - start < _SHORTEST_CUT or text[start : start + 64].lstrip()[:1] in (b"[", b""):
            continue  # short, or nested: the parser reads it
        parts.append(text[pos : start - 1])
        parts.append(json.dumps(f"{_MARKER}{len(lists)}").encode())
        lists.append(NumberList(text, start, end))
        pos = end + 1
    if lists:
        parts.append(text[pos:])
        rest = b"".join(parts)
    else:
        rest = text
    return loads(rest), NumberLists(lists, object_limit), len(rest)


def loads(text: bytes) -> Any:
    """orjson, or the standard library for what orjson refuses (``NaN``, huge integers).

    Raises :class:`json.JSONDecodeError`, :class:`UnicodeDecodeError` or :class:`RecursionError`.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


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
