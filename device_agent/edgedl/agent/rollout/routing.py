"""The routing layer of a rollout: a candidate tried against the live version.

A :class:`Rollout` is installed as the model's route in the
:class:`~edgedl.agent.repository.ModelRepository`: for every request that names no version,
:meth:`Rollout.route` returns the :class:`~edgedl.agent.served.Servable` that answers it
(the strategies in :mod:`.strategies` decide which).

Outcomes are recorded from the futures' done-callbacks, on the batcher's worker threads, so
the request path pays one callback. A verdict switches the route at once and calls
``on_verdict`` (once), which records it and releases the version no longer needed.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from edgedl.bundle import Manifest
from edgedl.errors import DataError, RolloutError

from ..served import Array, Servable, ServedModel, Tensors
from .config import DeployOptions, Strategy
from .health import VersionHealth

log = logging.getLogger(__name__)
NOT_THE_MODELS_FAULT = ("queue_full", "shutting_down", "not_found", "cancelled")


@dataclass(frozen=True)
class Verdict:
    """A rollout's decision: promote the candidate or roll it back, and why."""

    action: Literal["promote", "rollback"]
    reason: str

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready form."""
        return {"action": self.action, "reason": self.reason}


def counts_against(error: BaseException) -> bool:
    """Whether a failed request is the version's fault (bad input or a full queue is not)."""
    if isinstance(error, DataError):
        return False
    return getattr(error, "kind", None) not in NOT_THE_MODELS_FAULT


def outcome(future: Future[Tensors]) -> BaseException | None:
    """The future's exception; a cancelled future counts as a failure of its own kind."""
    if future.cancelled():
        return _Cancelled("cancelled")
    return future.exception()


class _Cancelled(Exception):
    kind = "cancelled"


class Watched:
    """A served version whose request outcomes are reported to ``record``.

    With ``before_answer`` the caller's future resolves only after ``record`` has run, so a
    verdict reached on a request is in force before its client sees the answer (the N-th
    good request of a canary promotes it before the N+1-th can be routed).
    """

    def __init__(
        self,
        served: ServedModel,
        record: Callable[[float, BaseException | None], None],
        before_answer: bool = False,
    ) -> None:
        self.served = served
        self._before_answer = before_answer
        self.name: str = served.name
        self.version: str = served.version
        self.manifest: Manifest = served.manifest
        self.input_datatypes: dict[str, str] = served.input_datatypes
        self.config = served.config
        self._record = record

    @property
    def ready(self) -> bool:
        """True when the version takes requests."""
        return self.served.ready

    def submit(
        self, inputs: Mapping[str, Array], timeout_s: float | None = None
    ) -> Future[Tensors]:
        """Queue the request on the version and report its outcome when it finishes."""
        started = time.perf_counter()
        future = self.served.submit(inputs, timeout_s)
        if not self._before_answer:
            future.add_done_callback(lambda f: self._record(started, outcome(f)))
            return future
        answer: Future[Tensors] = Future()

        def relay(done: Future[Tensors]) -> None:
            try:
                self._record(started, outcome(done))
            except Exception:  # bookkeeping must never cost the client its answer
                log.exception("recording a request of %s %s failed", self.name, self.version)
            try:
                if done.cancelled():
                    answer.cancel()
                elif (error := done.exception()) is not None:
                    answer.set_exception(error)
                else:
                    answer.set_result(done.result())
            except InvalidStateError:  # the caller gave up (cancelled) meanwhile
                pass

        # A caller giving up (deadline, disconnect) withdraws the queued request too.
        answer.add_done_callback(lambda a: future.cancel() if a.cancelled() else None)
        future.add_done_callback(relay)
        return answer

    def finish(self, started: float, error: BaseException | None) -> None:
        """Record the finished request with the version's observers."""
        self.served.finish(started, error)


class Rollout(ABC):
    """A candidate version tried against the live one under one strategy."""

    strategy: ClassVar[Strategy]

    def __init__(
        self,
        live: ServedModel,
        candidate: ServedModel,
        options: DeployOptions,
        on_verdict: Callable[[Rollout], None] | None = None,
    ) -> None:
        self.name = live.name
        self.live = live
        self.candidate = candidate
        self.options = options
        self.verdict: Verdict | None = None
        self.started_at = time.time()
        self.health = VersionHealth()
        self._on_verdict = on_verdict
        self._lock = threading.Lock()
        self._watched_candidate = Watched(candidate, self._record_candidate, before_answer=True)

    @abstractmethod
    def _route(self) -> Servable:
        """Who answers the next request while no verdict is reached."""

    def route(self) -> Servable:
        """Who answers the next request (after a verdict: the version that won)."""
        verdict = self.verdict
        if verdict is None:
            return self._route()
        return self.candidate if verdict.action == "promote" else self.live

    def check(self) -> None:  # noqa: B027  (only bluegreen has a time bound)
        """Reach a verdict that depends on time alone (nothing by default)."""

    def decide(self, verdict: Verdict) -> bool:
        """Settle the rollout; the first verdict wins. True when this one took effect."""
        with self._lock:
            if self.verdict is not None:
                return False
            self.verdict = verdict
        if self._on_verdict is not None:
            self._on_verdict(self)
        return True

    def _record_candidate(self, started: float, error: BaseException | None) -> None:
        if error is not None and not counts_against(error):
            return
        with self._lock:
            self.health.record(time.perf_counter() - started, ok=error is None)
            verdict = self._judge() if self.verdict is None else None
        if verdict is not None:
            self.decide(verdict)

    def _judge(self) -> Verdict | None:
        """The verdict the candidate's health calls for now (called under the lock)."""
        reason = self.health.breach(self.options)
        return None if reason is None else self._rollback(reason)

    def _rollback(self, reason: str) -> Verdict:
        return Verdict("rollback", f"version {self.candidate.version}: {reason}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description: strategy, versions, options and the candidate's health."""
        with self._lock:
            return {
                "strategy": self.strategy,
                "live": self.live.version,
                "candidate": self.candidate.version,
                "started_at": self.started_at,
                "options": self.options.model_dump(),
                "candidate_health": self.health.to_dict(),
                "verdict": None if self.verdict is None else self.verdict.to_dict(),
                **self._details(),
            }

    def _details(self) -> dict[str, Any]:
        return {}


def check_compatible(live: Manifest, candidate: Manifest) -> None:
    """Refuse a candidate that the live version's clients could not call the same way."""

    def shapes(specs: Sequence[Any]) -> dict[str, list[int]]:
        return {s.name: list(s.shape[1:]) for s in specs}

    for kind, a, b in (
        ("inputs", shapes(live.inputs), shapes(candidate.inputs)),
        ("outputs", shapes(live.outputs), shapes(candidate.outputs)),
    ):
        if set(a) != set(b) or any(
            len(a[n]) != len(b[n])
            or any(x != y and -1 not in (x, y) for x, y in zip(a[n], b[n], strict=True))
            for n in a
        ):
            raise RolloutError(
                f"version {candidate.version} has other {kind} than the live version "
                f"{live.version} ({_describe(b)} instead of {_describe(a)}); "
                "clients could not call it the same way: serve it under another model name"
            )


def _describe(shapes: dict[str, list[int]]) -> str:
    return ", ".join(
        f"{n}[?, {', '.join('?' if d == -1 else str(d) for d in s)}]"
        for n, s in sorted(shapes.items())
    )
