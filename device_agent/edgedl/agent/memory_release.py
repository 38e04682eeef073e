"""Give freed heap memory back to the operating system after large requests.

glibc keeps freed memory in its heap for reuse, and after a 50 MiB request most of it stays
counted in the process's RSS. ``malloc_trim(0)`` returns the free pages; elsewhere (musl,
macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system; ``False`` where that is not possible.

    Runs ``malloc_trim(0)`` through ctypes, which releases the GIL while it runs, so it may be
    called from a worker thread while the event loop keeps serving.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    try:
        trim(0)
    except OSError:  # pragma: no cover - a libc without malloc_trim raised at lookup already
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
