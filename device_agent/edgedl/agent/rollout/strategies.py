"""The rollout strategies: who answers each request while a candidate is tried, and when to stop.

A :class:`Rollout` is installed as the model's route in the
:class:`~edgedl.agent.repository.ModelRepository`: for every request that names no version,
:meth:`Rollout.route` returns the :class:`~edgedl.agent.served.Servable` that answers it.

- :class:`BlueGreen`: every request goes to the candidate while the old version stays loaded;
  the candidate is rolled back as soon as it breaks a bound, and promoted when its probation
  (a number of requests or seconds, whichever comes first) passes within bounds.
- :class:`Canary`: a share of the requests goes to the candidate; promoted after
  ``promote_after`` good requests, rolled back when it breaks a bound.
- :class:`Shadow`: the live version answers every request; the candidate runs on a copy and
  its outputs are compared with the live ones, never returned. Only a command ends it.

Outcomes are recorded from the futures' done-callbacks, on the batcher's worker threads, so
the request path pays nothing beyond one callback. A verdict switches the route at once and
calls ``on_verdict`` (once), which records it and releases the version no longer needed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from edgedl.bundle import Manifest
from edgedl.errors import DataError

from ..served import Array, Servable, ServedModel, Tensors
from .config import DeployOptions, Strategy
from .health import ShadowComparison, VersionHealth

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


def _outcome(future: Future[Tensors]) -> BaseException | None:
    """The future's exception; a cancelled future counts as a failure of its own kind."""
    if future.cancelled():
        return _Cancelled("cancelled")
    return future.exception()


class _Cancelled(Exception):
    kind = "cancelled"


class _Watched:
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
            future.add_done_callback(lambda f: self._record(started, _outcome(f)))
            return future
        answer: Future[Tensors] = Future()

        def relay(done: Future[Tensors]) -> None:
            try:
                self._record(started, _outcome(done))
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
        self._watched_candidate = _Watched(candidate, self._record_candidate, before_answer=True)

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


class BlueGreen(Rollout):
    """All traffic to the candidate, the old version kept warm until probation passes."""

    strategy = "bluegreen"

    def _route(self) -> Servable:
        return self._watched_candidate

    def check(self) -> None:
        """End probation when its time is up."""
        limit = self.options.probation_s
        if self.verdict is not None or limit is None or self.health.elapsed_s < limit:
            return
        with self._lock:
            verdict = self._end_probation(f"probation of {limit:g} s passed")
        self.decide(verdict)

    def _judge(self) -> Verdict | None:
        verdict = super()._judge()
        limit = self.options.probation_requests
        if verdict is None and limit is not None and self.health.requests >= limit:
            verdict = self._end_probation(f"probation of {limit} requests passed")
        return verdict

    def _end_probation(self, why: str) -> Verdict:
        reason = self.health.breach(self.options, final=True)
        if reason is not None:
            return self._rollback(reason)
        h = self.health
        p95 = h.latency_ms(95)
        return Verdict(
            "promote",
            f"{why} within bounds ({h.requests} requests, error rate {h.error_rate:.1%}"
            + (f", p95 {p95:.1f} ms)" if p95 is not None else ")"),
        )


class Canary(Rollout):
    """A share of the traffic to the candidate until it earns promotion or breaks a bound."""

    strategy = "canary"

    def __init__(
        self,
        live: ServedModel,
        candidate: ServedModel,
        options: DeployOptions,
        on_verdict: Callable[[Rollout], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(live, candidate, options, on_verdict)
        self._rng = rng or random.Random()
        self.live_health = VersionHealth()
        self._watched_live = _Watched(live, self._record_live)

    def _route(self) -> Servable:
        if self._rng.random() < self.options.share:
            return self._watched_candidate
        return self._watched_live

    def _record_live(self, started: float, error: BaseException | None) -> None:
        if error is not None and not counts_against(error):
            return
        with self._lock:
            self.live_health.record(time.perf_counter() - started, ok=error is None)

    def _judge(self) -> Verdict | None:
        verdict = super()._judge()
        if verdict is None and self.health.good >= self.options.promote_after:
            reason = self.health.breach(self.options, final=True)
            if reason is not None:
                return self._rollback(reason)
            verdict = Verdict(
                "promote",
                f"{self.health.good} good requests at a {self.options.share:.0%} share "
                f"(error rate {self.health.error_rate:.1%})",
            )
        return verdict

    def _details(self) -> dict[str, Any]:
        return {"live_health": self.live_health.to_dict()}


class _ShadowPair:
    """Answers with the live version and hands the shadow rollout a copy of the request."""

    def __init__(self, rollout: Shadow) -> None:
        self._rollout = rollout
        live = rollout.live
        self.live = live
        self.name: str = live.name
        self.version: str = live.version
        self.manifest: Manifest = live.manifest
        self.input_datatypes: dict[str, str] = live.input_datatypes
        self.config = live.config

    @property
    def ready(self) -> bool:
        """True when the live version takes requests."""
        return self.live.ready

    def submit(
        self, inputs: Mapping[str, Array], timeout_s: float | None = None
    ) -> Future[Tensors]:
        """Queue the request on the live version, and a copy on the candidate."""
        future = self.live.submit(inputs, timeout_s)
        self._rollout.copy(inputs, future, timeout_s)
        return future

    def finish(self, started: float, error: BaseException | None) -> None:
        """Record the finished request with the live version's observers."""
        self.live.finish(started, error)


class Shadow(Rollout):
    """The candidate sees a copy of every request; clients only ever get the live answer."""

    strategy = "shadow"

    def __init__(
        self,
        live: ServedModel,
        candidate: ServedModel,
        options: DeployOptions,
        on_verdict: Callable[[Rollout], None] | None = None,
        max_pending: int = 8,
    ) -> None:
        super().__init__(live, candidate, options, on_verdict)
        self.comparison = ShadowComparison()
        self._max_pending = max_pending
        self._pending = 0
        self._pair = _ShadowPair(self)

    def _route(self) -> Servable:
        return self._pair

    def copy(
        self, inputs: Mapping[str, Array], live: Future[Tensors], timeout_s: float | None
    ) -> None:
        """Run the candidate on a copy of a request and compare once both have answered."""
        with self._lock:
            if self.verdict is not None:
                return
            if self._pending >= self._max_pending:
                # The candidate cannot keep up: skip copies rather than queue without bound.
                self.comparison.skipped += 1
                return
            self._pending += 1
        started = time.perf_counter()
        try:
            shadow = self.candidate.submit(dict(inputs), timeout_s)
        except Exception as exc:
            self._copy_done(started, None, exc, live)
            return
        shadow.add_done_callback(lambda f: self._copy_done(started, f, None, live))

    def _copy_done(
        self,
        started: float,
        shadow: Future[Tensors] | None,
        submit_error: BaseException | None,
        live: Future[Tensors],
    ) -> None:
        error = submit_error if shadow is None else _outcome(shadow)
        latency = time.perf_counter() - started
        with self._lock:
            self._pending -= 1
            if error is not None:
                if counts_against(error):
                    self.health.record(latency, ok=False)
                    self.comparison.candidate_errors += 1
                else:
                    self.comparison.skipped += 1
                return
            self.health.record(latency, ok=True)
        assert shadow is not None
        outputs = shadow.result()
        live.add_done_callback(lambda f: self._compare(f, outputs))

    def _compare(self, live: Future[Tensors], outputs: Tensors) -> None:
        if _outcome(live) is not None:  # the live one failed: nothing to compare
            return
        with self._lock:
            self.comparison.add(live.result(), outputs)

    def _judge(self) -> Verdict | None:
        return None  # only a command promotes or discards a shadow

    def _details(self) -> dict[str, Any]:
        return {"shadow": self.comparison.to_dict(), "pending_copies": self._pending}


def make_rollout(
    live: ServedModel,
    candidate: ServedModel,
    options: DeployOptions,
    on_verdict: Callable[[Rollout], None] | None = None,
    shadow_max_pending: int = 8,
) -> Rollout:
    """The rollout for ``options.strategy``."""
    if options.strategy == "bluegreen":
        return BlueGreen(live, candidate, options, on_verdict)
    if options.strategy == "canary":
        return Canary(live, candidate, options, on_verdict)
    return Shadow(live, candidate, options, on_verdict, max_pending=shadow_max_pending)
