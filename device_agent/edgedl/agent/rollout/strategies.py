"""The rollout strategies: who answers each request while a candidate is tried, and when to stop.

- :class:`BlueGreen`: every request goes to the candidate while the old version stays loaded;
  the candidate is rolled back as soon as it breaks a bound, and promoted when its probation
  (a number of requests or seconds, whichever comes first) passes within bounds.
- :class:`Canary`: a share of the requests goes to the candidate; promoted after
  ``promote_after`` good requests, rolled back when it breaks a bound.
- :class:`Shadow`: the live version answers every request; the candidate runs on a copy and
  its outputs are compared with the live ones, never returned. Only a command ends it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from edgedl.bundle import Manifest

from ..served import Array, Servable, ServedModel, Tensors
from .config import DeployOptions
from .health import ShadowComparison, VersionHealth
from .routing import Rollout, Verdict, Watched, counts_against, outcome


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
        self._watched_live = Watched(live, self._record_live)

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
        error = submit_error if shadow is None else outcome(shadow)
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
        if outcome(live) is not None:  # the live one failed: nothing to compare
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
