"""The models the agent serves, by name and version, and which version answers by default.

For the rollout strategies:

* :meth:`ModelRepository.add` a loaded (started) :class:`~edgedl.agent.served.ServedModel`
  as a new version, with ``activate=False`` to keep it out of the default traffic;
* :meth:`ModelRepository.activate` switches the default version of a name atomically
  (one dict assignment under a lock; requests already queued finish on the old version);
* :meth:`ModelRepository.set_route` installs a per-request chooser for a name (a canary
  split, a shadow pair): ``route()`` is called for every request that names no version
  and returns the :class:`~edgedl.agent.served.Servable` to answer it. ``None`` removes it.
* :meth:`ModelRepository.remove` takes a version out (stop it yourself when it drains).

Requests that name a version (``/v2/models/{name}/versions/{v}/infer``) bypass routes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from edgedl.errors import ServingError

from .served import Servable, ServedModel

Route = Callable[[], Servable]


class ModelConflict(ServingError):
    """That version of that model is already being served."""

    status = 409
    kind = "conflict"


class ModelNotFound(ServingError):
    """No model (or no such version of it) is being served."""

    status = 404
    kind = "not_found"


@dataclass
class _Entry:
    versions: dict[str, ServedModel] = field(default_factory=dict)
    active: str | None = None
    route: Route | None = None


class ModelRepository:
    """Served models by name and version; thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def add(self, model: ServedModel, activate: bool = True) -> None:
        """Serve ``model`` as a version of its name; make it the default when ``activate``.

        Raise :class:`ModelConflict` when that version is already served.
        """
        with self._lock:
            entry = self._entries.setdefault(model.name, _Entry())
            if model.version in entry.versions:
                raise ModelConflict(
                    f"model {model.name!r} version {model.version} is already being served"
                )
            entry.versions[model.version] = model
            if activate or entry.active is None:
                entry.active = model.version

    def activate(self, name: str, version: str) -> ServedModel:
        """Make ``version`` the default of ``name``; return the previous default."""
        with self._lock:
            entry = self._entry(name)
            if version not in entry.versions:
                raise ModelNotFound(f"model {name!r} has no version {version!r}")
            previous = entry.versions[entry.active] if entry.active else entry.versions[version]
            entry.active = version
            return previous

    def remove(self, name: str, version: str) -> ServedModel:
        """Stop routing to ``version`` of ``name`` and return it (the caller stops it)."""
        with self._lock:
            entry = self._entry(name)
            model = entry.versions.pop(version, None)
            if model is None:
                raise ModelNotFound(f"model {name!r} has no version {version!r}")
            if entry.active == version:
                entry.active = next(iter(entry.versions), None)
            if not entry.versions:
                del self._entries[name]
            return model

    def set_route(self, name: str, route: Route | None) -> None:
        """Choose per request who answers ``name`` (see the module docstring)."""
        with self._lock:
            self._entry(name).route = route

    def resolve(self, name: str, version: str | None = None) -> Servable:
        """Who answers a request for ``name`` (and ``version`` when given)."""
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(
                f"unknown model {name!r} (serving: {', '.join(self.names()) or 'none'})"
            )
        if version:
            model = entry.versions.get(version)
            if model is None:
                raise ModelNotFound(
                    f"model {name!r} has no version {version!r} "
                    f"(versions: {', '.join(entry.versions)})"
                )
            return model
        route = entry.route
        if route is not None:
            return route()
        if entry.active is None:
            raise ModelNotFound(f"model {name!r} has no active version")
        return entry.versions[entry.active]

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """The served model ``version`` of ``name`` (the default version when None)."""
        with self._lock:
            entry = self._entry(name)
            key = version or entry.active
            if key is None or key not in entry.versions:
                raise ModelNotFound(f"model {name!r} has no version {version!r}")
            return entry.versions[key]

    def active_version(self, name: str) -> str | None:
        """The default version of ``name``."""
        with self._lock:
            return self._entry(name).active

    def versions(self, name: str) -> list[str]:
        """Every version of ``name`` being served."""
        with self._lock:
            return list(self._entry(name).versions)

    def names(self) -> list[str]:
        """Every model name being served."""
        return sorted(self._entries)

    def models(self) -> list[ServedModel]:
        """Every served model, all versions."""
        with self._lock:
            return [m for e in self._entries.values() for m in e.versions.values()]

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFound(f"unknown model {name!r}")
        return entry
