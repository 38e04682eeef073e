"""The running agent: its configuration, served models, observers, metrics and components.

:class:`AgentRuntime` is what the HTTP app, ``edgedl agent serve`` and the other parts of the
agent share. Seams for the other components:

* ``runtime.add_observer(observer)`` registers an
  :class:`~edgedl.agent.observe.InferenceObserver` (telemetry windows, rollout probation)
  for the events of every served model; ``remove_observer`` undoes it.
* ``runtime.add_component(component)`` registers anything with ``start()`` and ``stop()``
  (a telemetry publisher, a pipeline runner): started by :meth:`AgentRuntime.start` (or at
  once when the runtime already runs) and stopped, in reverse order, by
  :meth:`AgentRuntime.stop` after the models have drained.
* ``runtime.repository`` (:class:`~edgedl.agent.repository.ModelRepository`) holds the
  served versions; ``runtime.load_model(ModelConfig(path=...), activate=False)`` loads and
  starts a bundle as a new version.
* ``runtime.metrics.profile(name, version)`` is the live input/output profile of a version.
* ``runtime.shared_memory`` (:class:`~edgedl.agent.shared_memory.SharedMemoryRegions`, or
  ``None`` unless ``server.shared_memory``) holds the regions clients registered.
* ``runtime.predictions`` (:class:`~edgedl.agent.labels.PredictionLog`, None when
  ``[labels] max_predictions = 0``) remembers answered predictions for late labels;
  ``runtime.predictions.add_listener`` hears every label.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

from edgedl.bundle import Bundle
from edgedl.errors import ConfigError

from .config import AgentConfig, ModelConfig
from .labels import PredictionLog
from .metrics import AgentMetrics
from .observe import InferenceObserver
from .repository import ModelConflict, ModelRepository
from .security import BundleAdmission
from .served import Observers, ServedModel
from .shared_memory import SharedMemoryRegions
from .telemetry.sampling import Sampler

if TYPE_CHECKING:
    from .rollout.rollouts import Rollouts

log = logging.getLogger(__name__)


class Component(Protocol):
    """A long-running part of the agent."""

    def start(self) -> None:
        """Start working (threads, connections)."""

    def stop(self) -> None:
        """Stop working and release what it holds."""


class AgentRuntime:
    """Everything a running agent holds (see the module docstring for the seams)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.repository = ModelRepository()
        # Which bundles may be served ([security]): every load below goes through it.
        self.admission = BundleAdmission.from_config(config.security)
        self.observers = Observers()
        self.metrics = AgentMetrics(self.repository, profile_max_cpu=config.server.profile_max_cpu)
        self.observers.add(self.metrics)
        self.in_flight = 0  # HTTP requests being answered (touched on the event loop only)
        labels = config.labels
        self.predictions: PredictionLog | None = (
            PredictionLog(labels.max_predictions, labels.max_age_s, self._serves)
            if labels.enabled
            else None
        )
        # Keeps inputs for retraining when [sampling] is on (set by telemetry.attach).
        self.sampler: Sampler | None = None
        self._draining = threading.Event()
        self._components: list[Component] = []
        self._started = False
        # The model store's rollouts, when the agent has a writable store (rollout_routes).
        self.rollouts: Rollouts | None = None
        # The shared memory regions clients registered (HTTP and gRPC alike), when allowed.
        self.shared_memory = SharedMemoryRegions() if config.server.shared_memory else None

    def _serves(self, name: str, version: str) -> bool:
        """Whether ``version`` of ``name`` is still served."""
        return name in self.repository.names() and version in self.repository.versions(name)

    @property
    def draining(self) -> bool:
        """True once shutdown began: new requests are answered 503."""
        return self._draining.is_set()

    @property
    def ready(self) -> bool:
        """True when started, not draining, and every served model is ready."""
        return (
            self._started and not self.draining and all(m.ready for m in self.repository.models())
        )

    def add_observer(self, observer: InferenceObserver) -> None:
        """Send every serving event of every model to ``observer``."""
        self.observers.add(observer)

    def remove_observer(self, observer: InferenceObserver) -> None:
        """Stop sending events to ``observer``."""
        self.observers.remove(observer)

    def add_component(self, component: Component) -> None:
        """Start ``component`` with the agent (at once if it runs) and stop it with it."""
        self._components.append(component)
        if self._started:
            component.start()

    def load_model(self, model: ModelConfig, activate: bool = True) -> ServedModel:
        """Load, start and serve a bundle; raise BundleError/RuntimeUnavailableError if unusable.

        The bundle must pass ``[security]`` first (a SignatureError says why it does not).
        """
        bundle = Bundle.open(model.path, verify=False)
        self.admission.admit(bundle)  # verifies the model file too
        served = ServedModel(bundle, model, self.observers)
        self.metrics.set_latency_threshold(served.name, model.latency_threshold_ms)
        self.repository.add(served, activate=activate)
        served.start()
        log.info("serving %s version %s from %s", served.name, served.version, model.path)
        return served

    def start(self) -> None:
        """Load the configured models and start the metrics and components."""
        self.metrics.start()
        try:
            for i, model in enumerate(self.config.models):
                try:
                    self.load_model(model)
                except ModelConflict as exc:
                    raise ConfigError(f"models[{i}] ({model.path}): {exc}") from exc
        except BaseException:
            self.stop()
            raise
        for component in self._components:
            component.start()
        self._started = True

    def begin_shutdown(self) -> None:
        """Stop taking requests (503) while those in flight finish."""
        self._draining.set()

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop every model, then the components and metrics."""
        self._draining.set()
        for served in self.repository.models():
            served.stop(drain=True, timeout=timeout)
        for component in reversed(self._components):
            try:
                component.stop()
            except Exception:
                log.exception("stopping %r failed", component)
        self.metrics.stop()
        if self.shared_memory is not None and self.shared_memory.status():
            self.shared_memory.unregister()
        self._started = False
