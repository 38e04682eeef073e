"""The model store: verified bundle versions on disk and which one is active.

Layout (``<root>`` is ``[store] path``, ``/var/lib/edgedl`` by default)::

    <root>/<model>/<version>/      a bundle directory (model file, manifest.json, report.json)
    <root>/<model>/current         symlink to the active version's directory
    <root>/<model>/previous        symlink to the version that was active before (rollback)
    <root>/<model>/state.json      arrival times, the rollout in progress, every decision

A bundle is verified (sha256 and size against its manifest) when it arrives, after it has
been copied in, and again every time it is opened. Pointers are switched with
``os.replace`` of a fresh symlink, so a reader sees the old or the new version, never none.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgedl.bundle import MANIFEST_FILE, Bundle
from edgedl.errors import BundleError

CURRENT = "current"
PREVIOUS = "previous"
STATE_FILE = "state.json"
HISTORY_LIMIT = 200


@dataclass(frozen=True)
class StoredVersion:
    """One version of a model in the store."""

    model: str
    version: str
    path: Path
    sha256: str
    added_at: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description."""
        return {
            "model": self.model,
            "version": self.version,
            "path": str(self.path),
            "sha256": self.sha256,
            "added_at": self.added_at,
        }


class ModelStore:
    """Bundle versions under one root directory, with an atomically switched active pointer."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep: int = 3,
        admit: Callable[[Bundle], object] | None = None,
    ) -> None:
        if keep < 2:
            raise BundleError(f"store.keep must be at least 2 (active and previous), not {keep}")
        self.root = Path(root)
        self.keep = keep
        # Raises (a SignatureError) for a bundle this agent must not take ([security]).
        self._admit = admit
        # State files are read-modify-written from the event loop and from loader threads.
        self._state_lock = threading.RLock()

    # -- arrival -------------------------------------------------------------------------

    def add(self, bundle: Bundle | str | os.PathLike[str]) -> StoredVersion:
        """Copy a bundle (directory, ``.tar`` or opened) into the store; return the stored version.

        The bundle is verified before and after the copy, and must pass ``admit`` (the
        agent's signature check) before it is copied. Adding a version that is already
        stored with the same sha256 returns it unchanged; with another sha256 it is refused,
        since a version must never change under the same name.
        """
        source = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        if self._admit is not None:
            self._admit(source)  # verifies the model file too
        else:
            source.verify()
        m = source.manifest
        model_dir = self._model_dir(m.name)
        dest = model_dir / m.version
        if dest.exists():
            existing = self.open(m.name, m.version)
            if existing.manifest.sha256 != m.sha256:
                raise BundleError(
                    f"version {m.version} of {m.name} is already in the store with another "
                    f"sha256 ({existing.manifest.sha256[:12]}…); give the new bundle a new version"
                )
            return self.get(m.name, m.version)
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".incoming-{m.version}-", dir=model_dir))
        try:
            for child in source.path.iterdir():
                if child.is_file():
                    shutil.copyfile(child, staging / child.name)
                    _fsync_file(staging / child.name)
            Bundle.open(staging)  # what landed on this disk is what the manifest describes
            staging.rename(dest)
            _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self._state_lock:
            state = self.read_state(m.name)
            state.setdefault("added", {})[m.version] = time.time()
            self.write_state(m.name, state)
        return self.get(m.name, m.version)

    @contextmanager
    def unpacking(self, tar_path: Path) -> Iterator[Path]:
        """Unpack a bundle ``.tar`` in a scratch folder of the store; removed afterwards.

        (``Bundle.open`` on a ``.tar`` unpacks into the system's temporary folder until the
        process exits, which a months-long agent receiving many versions cannot afford.)
        """
        scratch = self.root / ".unpacking"
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            into = Path(tmp)
            try:
                with tarfile.open(tar_path) as tar:
                    tar.extractall(into, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise BundleError(f"{tar_path}: not a bundle .tar ({exc})") from exc
            entries = list(into.iterdir())
            if not (into / MANIFEST_FILE).is_file() and len(entries) == 1 and entries[0].is_dir():
                into = entries[0]
            yield into

    # -- reading -------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Names of the models that have at least one stored version."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and self._version_dirs(p)
        )

    def versions(self, model: str) -> list[StoredVersion]:
        """The stored versions of ``model``, oldest arrival first."""
        model_dir = self._model_dir(model)
        added = self.read_state(model).get("added", {})
        found = [
            self._describe(model, d, float(added.get(d.name, d.stat().st_mtime)))
            for d in self._version_dirs(model_dir)
        ]
        return sorted(found, key=lambda v: (v.added_at, v.version))

    def has(self, model: str, version: str) -> bool:
        """Whether ``version`` of ``model`` is in the store."""
        return (self._model_dir(model) / version / MANIFEST_FILE).is_file()

    def get(self, model: str, version: str) -> StoredVersion:
        """One stored version; :class:`BundleError` when it is not in the store."""
        path = self._model_dir(model) / version
        if not (path / "manifest.json").is_file():
            raise BundleError(f"version {version!r} of model {model!r} is not in the store")
        added = self.read_state(model).get("added", {})
        return self._describe(model, path, float(added.get(version, path.stat().st_mtime)))

    def open(self, model: str, version: str) -> Bundle:
        """Open a stored version, verifying its model file again (it may have rotted on disk)."""
        path = self._model_dir(model) / version
        if not path.is_dir():
            raise BundleError(f"version {version!r} of model {model!r} is not in the store")
        return Bundle.open(path)

    def current(self, model: str) -> str | None:
        """The active version of ``model``, or None when none was activated."""
        return self._pointer(model, CURRENT)

    def previous(self, model: str) -> str | None:
        """The version that was active before the current one, or None."""
        return self._pointer(model, PREVIOUS)

    # -- switching -----------------------------------------------------------------------

    def activate(self, model: str, version: str) -> None:
        """Make ``version`` the active one; the active one so far becomes ``previous``."""
        self.get(model, version)
        old = self.current(model)
        if old == version:
            return
        if old is not None:
            self._set_pointer(model, PREVIOUS, old)
        self._set_pointer(model, CURRENT, version)

    def rollback(self, model: str) -> str:
        """Swap ``current`` and ``previous``; return the version now active."""
        old, prev = self.current(model), self.previous(model)
        if prev is None or prev == old or not (self._model_dir(model) / prev).is_dir():
            raise BundleError(f"model {model!r} has no previous version to roll back to")
        self._set_pointer(model, CURRENT, prev)
        if old is not None:
            self._set_pointer(model, PREVIOUS, old)
        return prev

    def discard(self, model: str, version: str) -> None:
        """Delete one version that never served (one that failed to load); not the active one."""
        if version in (self.current(model), self.previous(model)):
            raise BundleError(f"version {version} of {model} is active or previous: not discarded")
        self._remove(self.get(model, version))
        with self._state_lock:
            state = self.read_state(model)
            state.get("added", {}).pop(version, None)
            self.write_state(model, state)

    def prune(self, model: str, protect: tuple[str, ...] = ()) -> list[str]:
        """Delete the oldest versions past ``keep``; never the active, previous or ``protect``.

        Returns the versions removed.
        """
        keep_always = {v for v in (self.current(model), self.previous(model), *protect) if v}
        stored = self.versions(model)
        removable = [v for v in stored if v.version not in keep_always]
        excess = len(stored) - self.keep
        removed: list[str] = []
        for v in removable[: max(excess, 0)]:
            self._remove(v)
            removed.append(v.version)
        if removed:
            with self._state_lock:
                state = self.read_state(model)
                for version in removed:
                    state.get("added", {}).pop(version, None)
                self.write_state(model, state)
        return removed

    # -- state ---------------------------------------------------------------------------

    def read_state(self, model: str) -> dict[str, Any]:
        """The model's state file as a dict (empty when missing or unreadable)."""
        path = self._model_dir(model) / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, model: str, state: dict[str, Any]) -> None:
        """Replace the model's state file atomically."""
        model_dir = self._model_dir(model)
        model_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(model_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def record(self, model: str, action: str, **details: Any) -> dict[str, Any]:
        """Append a decision (``deployed``, ``promoted``, ``rolled_back``...) to the history."""
        event = {"time": time.time(), "action": action, **details}
        with self._state_lock:
            state = self.read_state(model)
            history = state.setdefault("history", [])
            history.append(event)
            del history[:-HISTORY_LIMIT]
            self.write_state(model, state)
        return event

    def set_rollout(self, model: str, rollout: dict[str, Any] | None) -> None:
        """Remember the rollout in progress (None when there is none)."""
        with self._state_lock:
            state = self.read_state(model)
            state["rollout"] = rollout
            self.write_state(model, state)

    # -- internals -----------------------------------------------------------------------

    def _model_dir(self, model: str) -> Path:
        if not model or "/" in model or model.startswith(".") or model in (CURRENT, PREVIOUS):
            raise BundleError(f"invalid model name {model!r}")
        return self.root / model

    @staticmethod
    def _remove(stored: StoredVersion) -> None:
        # Rename first so a half-deleted directory never looks like a version.
        doomed = stored.path.with_name(f".removing-{stored.version}-{os.getpid()}")
        stored.path.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    @staticmethod
    def _version_dirs(model_dir: Path) -> list[Path]:
        if not model_dir.is_dir():
            return []
        return [
            d
            for d in model_dir.iterdir()
            if d.is_dir()
            and not d.is_symlink()
            and not d.name.startswith(".")
            and (d / "manifest.json").is_file()
        ]

    @staticmethod
    def _describe(model: str, path: Path, added_at: float) -> StoredVersion:
        try:
            sha = str(json.loads((path / "manifest.json").read_text(encoding="utf-8"))["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            sha = ""
        return StoredVersion(model, path.name, path, sha, added_at)

    def _pointer(self, model: str, name: str) -> str | None:
        link = self._model_dir(model) / name
        try:
            target = os.readlink(link)
        except OSError:
            return None
        version = Path(target).name
        return version if (link.parent / version).is_dir() else None

    def _set_pointer(self, model: str, name: str, version: str) -> None:
        model_dir = self._model_dir(model)
        tmp = model_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(version, tmp)
        os.replace(tmp, model_dir / name)
        _fsync_dir(model_dir)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
