"""Give freed heap memory back to the operating system after large requests.

glibc keeps freed memory in its heap for reuse, and after a 50 MiB request most of it stays
counted in the process's RSS. ``malloc_trim(0)`` returns the free pages. glibc also gives
threads their own heaps ("arenas", up to 8 per core), each keeping its own fragments after
large requests decoded on worker threads; :func:`limit_malloc_arenas` caps them, as
``MALLOC_ARENA_MAX`` does. Elsewhere (musl, macOS) both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)


_M_ARENA_MAX = -8  # glibc's malloc.h


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _libc_function(name: str) -> Callable[..., int] | None:
    libc = _libc()
    function: Callable[..., int] | None = getattr(libc, name, None) if libc else None
    return function


def limit_malloc_arenas(count: int = 2) -> bool:
    """Let glibc create at most ``count`` heaps for all threads; call before threads start.

    Does nothing when ``MALLOC_ARENA_MAX`` is set (the operator's choice wins) or without
    glibc; returns whether the limit was set.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(mallopt(_M_ARENA_MAX, count))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system; ``False`` where that is not possible.

    Runs ``malloc_trim(0)`` through ctypes, which releases the GIL while it runs, so it may be
    called from a worker thread while the event loop keeps serving.
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    try:
        trim(0)
    except OSError:  # pragma: no cover - a libc without malloc_trim raised at lookup already
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
