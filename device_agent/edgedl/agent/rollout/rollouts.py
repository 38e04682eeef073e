"""Model versions on a running agent: deploy, promote, roll back, and come back after a restart.

:class:`Rollouts` joins the :class:`~edgedl.agent.rollout.store.ModelStore` (what is on disk,
which version is active, every decision) and the agent's
:class:`~edgedl.agent.repository.ModelRepository` (what is loaded and who answers requests).
It is a component of the agent (``start()``/``stop()``). A verdict is recorded by whichever
thread reaches it, at once; the component's one thread then releases the version no longer
needed (once its queue drains), prunes the store, and ends time-bound probations when no
request comes.

The store's ``current`` pointer moves only when a version is promoted (or rolled back to):
during a rollout it still names the version that was serving before, so an agent restarted
in the middle of a rollout comes back on that version and records the rollout as abandoned.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgedl.bundle import Bundle
from edgedl.errors import BundleError, EdgeDLError, RolloutError

from ..repository import ModelNotFound, ModelRepository
from ..served import ServedModel
from ..serving_config import ModelConfig
from .config import DeployOptions, RolloutConfig
from .restore import adopt, serve_active_version
from .routing import Rollout, Verdict, check_compatible
from .store import ModelStore
from .strategies import make_rollout

log = logging.getLogger(__name__)

# Load a bundle as a started served version (activate: make it the default of its name).
Loader = Callable[[ModelConfig, bool], ServedModel]
TICK_S = 0.5
RELEASE_GRACE_S = 0.2  # requests routed just before a switch still reach the old version
HISTORY_SHOWN = 20


class Rollouts:
    """Deployments of new model versions on this agent (see the module docstring)."""

    def __init__(
        self,
        store: ModelStore,
        repository: ModelRepository,
        load: Loader,
        config: RolloutConfig | None = None,
    ) -> None:
        self.store = store
        self.repository = repository
        self.config = config or RolloutConfig()
        self._load = load
        self._lock = threading.RLock()
        self._rollouts: dict[str, Rollout] = {}
        self._loading: set[str] = set()
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Bring the store and the served models in line, then start the rollout thread.

        Models already served (loaded from ``[[models]]``) are copied into the store; a bundle
        the store has not seen before becomes the active version. Then every model serves
        its store's active version, verified again as it loads; if that version fails to
        load, the previous one serves instead and the rollback is recorded.
        """
        self.restore()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgedl-rollouts", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish pending releases and stop the thread (the models stop with the agent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def wait_idle(self) -> None:
        """Block until every verdict reached so far is recorded and its loser released."""
        if self._thread is not None:
            self._jobs.join()

    def restore(self) -> None:
        """Adopt configured models into the store and serve each model's active version."""
        with self._lock:
            for served in self.repository.models():
                try:
                    adopt(self.store, served)
                except (OSError, EdgeDLError):  # serve it anyway; the store is best effort here
                    log.exception("cannot keep %s %s in the store", served.name, served.version)
            for name in self.store.models():
                try:
                    serve_active_version(self, name)
                except (OSError, EdgeDLError):
                    log.exception("cannot restore the active version of %s", name)

    # -- commands ------------------------------------------------------------------------

    def deploy(
        self, bundle_path: str | Path, options: DeployOptions | None = None
    ) -> dict[str, Any]:
        """Add a bundle to the store and start rolling it out; return what happened.

        The bundle is verified on arrival and again when loaded; if either fails, or it
        does not load, nothing changes and the current version keeps serving. The first
        version of a model is activated at once, whatever the strategy.
        """
        options = options or self.config.deploy_defaults()
        if Path(bundle_path).is_file():  # a .tar: unpack next to the store, not in /tmp
            with self.store.unpacking(Path(bundle_path)) as unpacked:
                return self._deploy(Bundle.open(unpacked), options)
        return self._deploy(Bundle.open(bundle_path), options)

    def _deploy(self, source: Bundle, options: DeployOptions) -> dict[str, Any]:
        name, version = source.manifest.name, source.manifest.version
        with self._lock:
            running = self._rollouts.get(name)
            if running is not None:
                raise RolloutError(
                    f"a {running.strategy} rollout of {name} version {running.candidate.version} "
                    "is in progress: promote or roll it back first"
                )
            if name in self._loading:
                raise RolloutError(f"another version of {name} is being loaded; try again")
            live = self.live(name)
            if live is not None and live.version == version:
                raise RolloutError(f"{name} version {version} is already serving")
            if live is not None:
                check_compatible(live.manifest, source.manifest)
            self._loading.add(name)
        arrived = False
        try:
            arrived = version not in {v.version for v in self.store.versions(name)}
            self.store.add(source)
            candidate = self.load_version(name, version, activate=live is None, like=live)
        except EdgeDLError as exc:
            if arrived and self.store.has(name, version):  # never served: do not keep it
                self.store.discard(name, version)
            self.store.record(name, "refused", version=version, reason=str(exc))
            raise
        finally:
            with self._lock:
                self._loading.discard(name)
        with self._lock:
            if live is None:
                self.store.activate(name, version)
                event = self.store.record(
                    name, "activated", version=version, reason="first version of the model"
                )
                self.store.prune(name)
                return {"model": name, "version": version, "serving": version, "event": event}
            rollout = make_rollout(
                live, candidate, options, self._on_verdict, self.config.shadow_max_pending
            )
            self._rollouts[name] = rollout
            plan = {
                "strategy": options.strategy,
                "live": live.version,
                "options": options.model_dump(),
            }
            self.store.set_rollout(name, {**plan, "candidate": version})
            event = self.store.record(name, "started", version=version, **plan)
            self.repository.set_route(name, rollout.route)
        log.info(
            "%s rollout of %s %s started (live %s)", options.strategy, name, version, live.version
        )
        return {
            "model": name,
            "version": version,
            "serving": live.version,
            "event": event,
            "rollout": rollout.to_dict(),
        }

    def promote(self, model: str | None = None) -> dict[str, Any]:
        """Promote the candidate of the running rollout now (how a shadow ends well)."""
        name = self._pick(model)
        with self._lock:
            rollout = self._rollouts.get(name)
        if rollout is None:
            raise RolloutError(f"no rollout of {name} is in progress: nothing to promote")
        rollout.decide(Verdict("promote", "promoted by command"))
        self.wait_idle()
        return self._result(name, rollout)

    def rollback(self, model: str | None = None) -> dict[str, Any]:
        """Stop the running rollout (keep the live version), or go back to the previous version.

        Going back loads the previous version from the store (verified again); if it fails
        to load, the current version keeps serving and the error says why.
        """
        name = self._pick(model)
        with self._lock:
            rollout = self._rollouts.get(name)
        if rollout is not None:
            rollout.decide(Verdict("rollback", "rolled back by command"))
            self.wait_idle()
            return self._result(name, rollout)
        with self._lock:
            if name in self._loading:
                raise RolloutError(f"a version of {name} is being loaded; try again")
            live = self.live(name)
            previous = self.store.previous(name)
            if previous is None or (live is not None and previous == live.version):
                raise RolloutError(f"{name} has no previous version to roll back to")
            self._loading.add(name)
        try:
            restored = self.load_version(name, previous, activate=True, like=live)
        except EdgeDLError as exc:
            self.store.record(name, "refused", version=previous, reason=f"rollback: {exc}")
            raise
        finally:
            with self._lock:
                self._loading.discard(name)
        with self._lock:
            self.store.rollback(name)
            event = self.store.record(
                name,
                "rolled_back",
                version=live.version if live else None,
                to=previous,
                reason="rolled back by command",
            )
        if live is not None:
            self._jobs.put(lambda: self.release(live))
            self.wait_idle()
        return {"model": name, "version": previous, "serving": restored.version, "event": event}

    def status(self) -> dict[str, Any]:
        """What every model serves, the rollout in progress, stored versions and history."""
        with self._lock:
            for running in list(self._rollouts.values()):
                _check(running)
            names = sorted(set(self.store.models()) | set(self.repository.names()))
            models: dict[str, Any] = {}
            for name in names:
                rollout = self._rollouts.get(name)
                live = self.live(name)
                state = self.store.read_state(name)
                models[name] = {
                    "serving": live.version if live else None,
                    "current": self.store.current(name),
                    "previous": self.store.previous(name),
                    "rollout": rollout.to_dict() if rollout else None,
                    "versions": [v.to_dict() for v in self.store.versions(name)],
                    "history": state.get("history", [])[-HISTORY_SHOWN:],
                }
        return {"store": str(self.store.root), "models": models}

    def rollout(self, model: str) -> Rollout | None:
        """The rollout of ``model`` in progress, if any."""
        with self._lock:
            return self._rollouts.get(model)

    # -- verdicts ------------------------------------------------------------------------

    def _on_verdict(self, rollout: Rollout) -> None:
        """Switch the routing and record the decision now; release the loser on our thread.

        Runs on whichever thread reached the verdict (a batcher worker, a command, the
        tick), before the request that decided it is answered, so that answer already
        reflects the decision, on disk too.
        """
        verdict = rollout.verdict
        assert verdict is not None
        name, candidate, live = rollout.name, rollout.candidate, rollout.live
        promote = verdict.action == "promote"
        with self._lock:
            if self._rollouts.get(name) is not rollout:
                return
            del self._rollouts[name]
            if promote:
                self.repository.activate(name, candidate.version)
            self.repository.set_route(name, None)
            try:
                if promote:
                    self.store.activate(name, candidate.version)
                self.store.set_rollout(name, None)
                self.store.record(
                    name,
                    "promoted" if promote else "rolled_back",
                    strategy=rollout.strategy,
                    version=candidate.version,
                    live=live.version,
                    reason=verdict.reason,
                    health=rollout.health.to_dict(),
                    **(
                        {"shadow": rollout.to_dict()["shadow"]}
                        if rollout.strategy == "shadow"
                        else {}
                    ),
                )
            except (OSError, EdgeDLError):  # the disk failed: serve on, say so loudly
                log.exception(
                    "recording that %s %s was %s failed", name, candidate.version, verdict.action
                )
        log.info("%s %s: %s (%s)", name, candidate.version, verdict.action, verdict.reason)
        released = live if promote else candidate
        self._jobs.put(lambda: self.release(released, prune=promote))

    def release(self, served: ServedModel, prune: bool = False) -> None:
        """Stop routing to ``served`` and stop it once its queue drains (optionally prune first)."""
        if prune:
            with self._lock:
                self.store.prune(served.name)
        threading.Event().wait(RELEASE_GRACE_S)
        try:
            if served.version in self.repository.versions(served.name):
                self.repository.remove(served.name, served.version)
        except EdgeDLError:
            pass
        served.stop(drain=True, timeout=30.0)

    def _work(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=TICK_S)
            except queue.Empty:
                with self._lock:
                    rollouts = list(self._rollouts.values())
                for rollout in rollouts:
                    _check(rollout)
                continue
            try:
                if job is None:
                    return
                job()
            except Exception:
                log.exception("a rollout job failed")
            finally:
                self._jobs.task_done()

    # -- internals -----------------------------------------------------------------------

    def _pick(self, model: str | None) -> str:
        names = sorted(set(self.repository.names()) | set(self._rollouts))
        if model:
            if model not in names:
                raise ModelNotFound(
                    f"unknown model {model!r} (serving: {', '.join(names) or 'none'})"
                )
            return model
        if len(names) == 1:
            return names[0]
        raise RolloutError(
            "name the model (several are served: " + ", ".join(names) + ")"
            if names
            else "no model is being served"
        )

    def live(self, name: str) -> ServedModel | None:
        """The version of ``name`` that answers by default, None when it is not served."""
        if name not in self.repository.names():
            return None
        return self.repository.get(name)

    def load_version(
        self, name: str, version: str, activate: bool, like: ServedModel | None
    ) -> ServedModel:
        """Load a stored version (verified again) with the batching settings of ``like``."""
        path = self.store.get(name, version).path
        settings = (
            like.config.model_copy(update={"path": str(path)})
            if like
            else ModelConfig(path=str(path))
        )
        try:
            return self._load(settings, activate)
        except EdgeDLError:
            raise
        except Exception as exc:  # an interpreter refusing the model file
            raise BundleError(
                f"{name} version {version} cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc

    def _result(self, name: str, rollout: Rollout) -> dict[str, Any]:
        live = self.live(name)
        history = self.store.read_state(name).get("history", [])
        return {
            "model": name,
            "version": rollout.candidate.version,
            "serving": live.version if live else None,
            "event": history[-1] if history else None,
            "rollout": rollout.to_dict(),
        }


def _check(rollout: Rollout) -> None:
    try:
        rollout.check()
    except Exception:
        log.exception("checking the rollout of %s failed", rollout.name)
