"""System shared memory regions that clients on the device register to hand tensors over.

The protocol's system shared memory extension, as Triton defines it (and as
``tritonclient.utils.shared_memory`` creates regions): a client creates a POSIX shared
memory object (``/dev/shm/<key>``), registers a region of it under a name, then sends
inputs that point at ``(region, offset, byte_size)`` instead of carrying their bytes, and
may ask for outputs to be written into a region. Inputs are read in place (an array over the
mapping, no copy until the model's batch is assembled).

One :class:`SharedMemoryRegions` serves both APIs (``runtime.shared_memory``, when
``server.shared_memory`` is on): a region registered over HTTP
(``/v2/systemsharedmemory/...``) is usable over gRPC and the other way round. A tensor's
parameters (``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset``:
JSON values over HTTP, ``InferParameter`` values over gRPC) are read by :func:`region_slice`.

Only objects directly under ``/dev/shm`` can be registered (a key is one name, no ``/`` but a
leading one, no symlinks), at most :data:`MAX_REGIONS` at once. Any problem raises
:class:`SharedMemoryError` (a bad request, HTTP 400) saying what is wrong.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.datatypes import datatype_of
from edgedl.errors import DataError, ServingError

SHM_DIR = "/dev/shm"
MAX_REGIONS = 64


class SharedMemoryError(ServingError, DataError):
    """A shared memory region that is unknown, unusable or too small for what was asked."""

    status = 400
    kind = "bad_input"


@dataclass
class RegionSlice:
    """Where a tensor lies in a registered shared memory region."""

    region: str
    offset: int
    byte_size: int


def region_slice(parameters: Mapping[str, Any], what: str) -> RegionSlice | None:
    """The shared memory parameters of a tensor (``what``: "input 'x'"), ``None`` without."""
    region = parameters.get("shared_memory_region")
    if region is None:
        return None
    size = parameters.get("shared_memory_byte_size")
    offset = parameters.get("shared_memory_offset", 0)
    if not isinstance(region, str) or not isinstance(size, int) or not _is_count(size, offset):
        raise SharedMemoryError(
            f"{what}: shared memory needs shared_memory_region (a string), "
            "shared_memory_byte_size and optionally shared_memory_offset (integers >= 0)"
        )
    return RegionSlice(region, offset, size)


def _is_count(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


@dataclass
class Region:
    """A registered region: ``byte_size`` bytes from ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap


class SharedMemoryRegions:
    """The regions registered with the agent, by name."""

    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Map ``byte_size`` bytes from ``offset`` of ``/dev/shm/<key>`` under ``name``."""
        if not name:
            raise SharedMemoryError("a shared memory region needs a name")
        if name in self._regions:
            raise SharedMemoryError(f"shared memory region {name!r} is already registered")
        if len(self._regions) >= MAX_REGIONS:
            raise SharedMemoryError(f"at most {MAX_REGIONS} shared memory regions at once")
        leaf = key.removeprefix("/")
        if not leaf or "/" in leaf or leaf in (".", ".."):
            raise SharedMemoryError(
                f"shared memory key {key!r} must name an object in {SHM_DIR} (like '/input0')"
            )
        if byte_size <= 0 or offset < 0:
            raise SharedMemoryError("a region needs a positive byte_size and offset >= 0")
        try:
            fd = os.open(os.path.join(SHM_DIR, leaf), os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise SharedMemoryError(f"cannot open shared memory {key!r}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise SharedMemoryError(
                    f"shared memory {key!r} holds {size} bytes, less than offset {offset} "
                    f"+ byte_size {byte_size}"
                )
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str = "") -> None:
        """Forget region ``name`` (every region when ``name`` is empty)."""
        names = [name] if name else list(self._regions)
        for each in names:
            region = self._regions.pop(each, None)
            if region is None:
                raise SharedMemoryError(f"unknown shared memory region {each!r}")
            # A request still reading it keeps the mapping until its last view goes.
            with contextlib.suppress(BufferError):
                region.mapping.close()

    def status(self, name: str = "") -> list[Region]:
        """The region ``name``, or every region when ``name`` is empty."""
        if not name:
            return list(self._regions.values())
        return [self._get(name)]

    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """``byte_size`` bytes at ``offset`` within region ``name``, without a copy."""
        region = self._get(name)
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise SharedMemoryError(
                f"shared memory region {name!r} holds {region.byte_size} bytes: offset "
                f"{offset} + byte_size {byte_size} is outside it"
            )
        start = region.offset + offset
        return memoryview(region.mapping)[start : start + byte_size]

    def read(
        self, where: RegionSlice, name: str, shape: list[int], dtype: np.dtype[Any]
    ) -> NDArray[Any]:
        """Input ``name`` of ``shape`` and ``dtype`` as an array over the region, not a copy."""
        needed = math.prod(shape) * dtype.itemsize
        if where.byte_size != needed:
            raise SharedMemoryError(
                f"input {name!r}: shape {shape} of {datatype_of(dtype)} needs {needed} bytes, "
                f"shared_memory_byte_size is {where.byte_size}"
            )
        view = self.view(where.region, where.offset, where.byte_size)
        return np.frombuffer(view, dtype=dtype).reshape(shape)

    def check(self, where: RegionSlice) -> None:
        """Raise unless ``where`` names a registered region and lies within it."""
        self.view(where.region, where.offset, where.byte_size)

    def write(self, where: RegionSlice, name: str, arr: NDArray[Any]) -> None:
        """Output ``name`` into ``where`` (raw, row-major, little-endian bytes)."""
        if arr.nbytes > where.byte_size:
            raise SharedMemoryError(
                f"output {name!r} takes {arr.nbytes} bytes, more than the {where.byte_size} "
                f"of its shared memory region {where.region!r}"
            )
        view = self.view(where.region, where.offset, arr.nbytes)
        raw = np.ascontiguousarray(arr, arr.dtype.newbyteorder("<")).reshape(-1)
        np.frombuffer(view, np.uint8)[:] = raw.view(np.uint8)

    def _get(self, name: str) -> Region:
        try:
            return self._regions[name]
        except KeyError:
            raise SharedMemoryError(f"unknown shared memory region {name!r}") from None
