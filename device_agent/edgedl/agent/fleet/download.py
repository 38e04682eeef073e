"""Resumable bundle downloads over HTTP.

A download goes to ``<name>.part`` next to its destination. When the connection breaks,
the next attempt asks for the rest with ``Range: bytes=<size of the part>-`` and appends
what a ``206`` brings; a server that ignores ranges answers ``200`` and the file starts
over. The finished file's sha256 must be the expected one, else it is deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

from edgedl.errors import FleetError

log = logging.getLogger("edgedl.agent.fleet")

Progress = Callable[[int, int | None], None]


def download(
    url: str,
    dest: Path,
    sha256: str | None,
    size: int | None = None,
    timeout_s: float = 30.0,
    attempts: int = 20,
    retry_min_s: float = 0.2,
    retry_max_s: float = 10.0,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); return ``dest``.

    Raise :class:`FleetError` when the server refuses (4xx), every attempt failed, or the
    file's sha256 is not ``sha256``.
    """
    import httpx

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for attempt in range(attempts):
        if stop is not None and stop.is_set():
            raise FleetError("download stopped: the agent is shutting down")
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have >= size:
            break
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with httpx.stream(
                "GET", url, headers=headers, timeout=timeout_s, follow_redirects=True
            ) as response:
                if response.status_code == 416 and have:
                    if size is None or have >= size:
                        break  # the part is already whole
                    part.unlink()  # the server's file is shorter: start over
                    continue
                if response.status_code >= 400:
                    raise FleetError(f"download of {url} refused: HTTP {response.status_code}")
                append = response.status_code == 206 and have > 0
                if not append and have:
                    log.info(
                        "%s does not resume (HTTP %d): starting over", url, response.status_code
                    )
                with open(part, "ab" if append else "wb") as fh:
                    done = have if append else 0
                    # Chunks as they arrive: a fixed chunk size would drop the buffered tail
                    # of a broken connection, and the resume would start before it.
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, size)
                        if stop is not None and stop.is_set():
                            raise FleetError("download stopped: the agent is shutting down")
                    fh.flush()
                    os.fsync(fh.fileno())
            if size is None or part.stat().st_size >= size:
                break
            last_error = f"the connection closed after {part.stat().st_size} of {size} bytes"
        except httpx.HTTPError as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        got = part.stat().st_size if part.exists() else 0
        log.warning("download of %s broke at %d bytes (%s); resuming", url, got, last_error)
        ceiling = min(retry_max_s, retry_min_s * 2**attempt)
        if (stop or threading.Event()).wait(random.uniform(ceiling / 2, ceiling)):
            raise FleetError("download stopped: the agent is shutting down")
    else:
        raise FleetError(f"download of {url} failed after {attempts} attempts: {last_error}")
    actual = _sha256(part)
    if sha256 is not None and actual != sha256:
        part.unlink(missing_ok=True)
        raise FleetError(
            f"the download of {url} has sha256 {actual[:12]}…, not the published "
            f"{sha256[:12]}…: it was altered on the way or on the server"
        )
    os.replace(part, dest)
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
