"""What an agent serves when it starts: the configured bundles and the store's active versions.

Configured bundles (``[[models]]``) are copied into the store; one the store has not seen
before becomes the active version (a deliberate change of agent.toml wins), otherwise the
store's ``current`` pointer does (a version promoted since wins over the file). A rollout
that was running when the agent stopped is recorded as abandoned: the version it was trying
is not served. An active version that fails to load falls back to the previous one.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from edgedl.errors import BundleError, EdgeDLError

from ..served import ServedModel
from .store import ModelStore

if TYPE_CHECKING:
    from .rollouts import Rollouts

log = logging.getLogger(__name__)


def adopt(store: ModelStore, served: ServedModel) -> None:
    """Copy a configured, already served bundle into the store; activate it when it is new."""
    name, version = served.name, served.version
    known = {v.version for v in store.versions(name)}
    try:
        store.add(served.bundle.path)
    except BundleError as exc:  # e.g. a rebuilt bundle reusing a stored version's name
        log.warning("%s %s is served but not kept in the store: %s", name, version, exc)
        store.record(name, "refused", version=version, reason=str(exc))
        return
    if version not in known or store.current(name) is None:
        store.activate(name, version)
        store.record(name, "activated", version=version, reason="configured bundle")


def serve_active_version(rollouts: Rollouts, name: str) -> None:
    """Make ``name`` serve its store's active version (or the previous one if that fails)."""
    store = rollouts.store
    interrupted = store.read_state(name).get("rollout")
    if interrupted:
        store.set_rollout(name, None)
        store.record(
            name,
            "abandoned",
            strategy=interrupted.get("strategy"),
            version=interrupted.get("candidate"),
            reason="the agent restarted during the rollout",
        )
    current = store.current(name)
    live = rollouts.live(name)
    if current is None or (live is not None and live.version == current):
        return
    try:
        rollouts.load_version(name, current, activate=True, like=live)
    except EdgeDLError as exc:
        log.error("%s version %s cannot be served: %s", name, current, exc)
        _fall_back(rollouts, name, current, live, f"failed to load: {exc}")
        return
    if live is not None:
        rollouts.release(live)


def _fall_back(
    rollouts: Rollouts, name: str, current: str, live: ServedModel | None, reason: str
) -> None:
    store = rollouts.store
    previous = store.previous(name)
    if live is not None or previous is None:  # the configured bundle (or nothing) serves
        store.record(name, "refused", version=current, reason=reason)
        return
    try:
        rollouts.load_version(name, previous, activate=True, like=None)
    except EdgeDLError as exc:
        log.error("%s version %s cannot be served either: %s", name, previous, exc)
        store.record(name, "refused", version=previous, reason=f"failed to load: {exc}")
        return
    store.rollback(name)
    store.record(name, "rolled_back", version=current, to=previous, reason=reason)
