"""The artifact store: published bundle ``.tar`` files, kept where the collector serves them.

:class:`ArtifactStore` is the interface the collector needs (put a verified file in, find
the file to serve); :class:`FolderArtifacts` keeps them in a folder as
``<root>/<model>/<version>.tar``. S3-compatible storage works through a mount of the bucket
(s3fs, rclone mount, goofys) given as the folder: files are written once, to a temporary
name and renamed, and read with ranges, which those mounts support (docs/fleet.md).

A published bundle is checked before it is kept: a readable bundle ``.tar`` whose model
file matches its manifest, its ``.tar`` sha256 as the publisher computed it, and, when the
collector has trusted keys, a signature by one of them (:func:`edgedl.signing.verify_bundle`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgedl.bundle import MANIFEST_FILE, Bundle, Manifest
from edgedl.errors import BundleError, FleetError
from edgedl.signing import TrustedKeys, read_signature, verify_bundle

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class Artifact:
    """A published bundle: what it is and the file that is served."""

    model: str
    version: str
    sha256: str
    size_bytes: int
    model_sha256: str
    key_id: str | None
    manifest: Manifest


class ArtifactStore(Protocol):
    """Where published bundle files live (a folder, or a mounted bucket)."""

    def put(self, model: str, version: str, source: Path) -> Path:
        """Keep ``source`` as the file of ``model`` ``version`` (moved, atomically)."""

    def path(self, model: str, version: str) -> Path | None:
        """The file to serve, None when it is not there."""

    def scratch(self) -> Path:
        """A folder on the same file system for uploads in progress."""


class FolderArtifacts:
    """Bundles as ``<root>/<model>/<version>.tar``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def put(self, model: str, version: str, source: Path) -> Path:
        """Move ``source`` into place (same file system: a rename)."""
        folder = self.root / safe_name(model, "model")
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / f"{safe_name(version, 'version')}.tar"
        os.replace(source, dest)
        return dest

    def path(self, model: str, version: str) -> Path | None:
        """The ``.tar`` of ``model`` ``version``, None when absent or the names are not valid."""
        if not (_NAME_RE.match(model) and _NAME_RE.match(version)):
            return None
        p = self.root / model / f"{version}.tar"
        return p if p.is_file() else None

    def scratch(self) -> Path:
        """``<root>/.uploads``."""
        folder = self.root / ".uploads"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def safe_name(value: str, what: str) -> str:
    """``value`` if it can be a file name in the store, else :class:`FleetError`."""
    if not _NAME_RE.match(value):
        raise FleetError(f"invalid {what} {value!r}: use letters, digits, '.', '_' or '-'")
    return value


async def receive_upload(
    chunks: AsyncIterator[bytes], folder: Path, max_bytes: int
) -> tuple[Path, str, int]:
    """Write an upload to a new file in ``folder``; return it, its sha256 and its size.

    Raise :class:`FleetError` (and remove the file) when it is larger than ``max_bytes``.
    """
    path = folder / f"upload-{secrets.token_hex(8)}.tar"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as fh:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise FleetError(f"the bundle is larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, digest.hexdigest(), size


def inspect_upload(
    path: Path, sha256: str, size: int, trusted: TrustedKeys, required: bool
) -> Artifact:
    """Open an uploaded ``.tar`` as a bundle and check it (see the module docstring).

    Raise :class:`BundleError` (not a bundle, model file altered) or
    :class:`~edgedl.errors.SignatureError` (unsigned, unknown key, manifest changed).
    """
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        into = Path(tmp)
        try:
            with tarfile.open(path) as tar:
                tar.extractall(into, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"not a bundle .tar ({exc})") from exc
        entries = list(into.iterdir())
        if not (into / MANIFEST_FILE).is_file() and len(entries) == 1 and entries[0].is_dir():
            into = entries[0]
        bundle = Bundle.open(into)
        key_id = verify_bundle(bundle, trusted, check_model=False) if required else None
        if key_id is None:
            signature = read_signature(bundle)
            key_id = signature.key_id if signature is not None else None
        m = bundle.manifest
        return Artifact(m.name, m.version, sha256, size, m.sha256, key_id, m)
