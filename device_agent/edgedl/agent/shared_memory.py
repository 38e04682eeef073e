"""System shared memory regions that clients on the device register to hand tensors over.

The protocol's system shared memory extension, as Triton defines it (and as
``tritonclient.utils.shared_memory`` creates regions): a client creates a POSIX shared
memory object (``/dev/shm/<key>``), registers a region of it under a name, then sends
inputs that point at ``(region, offset, byte_size)`` instead of carrying their bytes, and
may ask for outputs to be written into a region. Inputs are read in place (an array over the
mapping, no copy until the model's batch is assembled).

Only objects directly under ``/dev/shm`` can be registered (a key is one name, no ``/`` but a
leading one, no symlinks), at most :data:`MAX_REGIONS` at once. Any problem raises
:class:`SharedMemoryError` (a bad request) saying what is wrong.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass

from .oip import BadRequest

SHM_DIR = "/dev/shm"
MAX_REGIONS = 64


class SharedMemoryError(BadRequest):
    """A shared memory region that is unknown, unusable or too small for what was asked."""


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

    def _get(self, name: str) -> Region:
        try:
            return self._regions[name]
        except KeyError:
            raise SharedMemoryError(f"unknown shared memory region {name!r}") from None
