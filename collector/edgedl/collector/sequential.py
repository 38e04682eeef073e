"""Sequential drift detection: a two-sided CUSUM per statistic over a device's windows.

A single window compares a few hundred samples with the reference, so a shift of a tenth of a
standard deviation hides in its noise. Telemetry is a stream of windows; a CUSUM adds up the
evidence of consecutive windows and finds a small shift that persists, with a stated expected
number of windows between false alarms (its ARL₀).

**Steps.** Each statistic's values are summed (exactly: windows carry sum and count) until a
step holds ``step_samples`` of them; then its mean ``m`` becomes one step,
``u = (m − μ) / σ``: the shift in reference standard deviations (``μ, σ`` from the reference
profile's exact moments, σ floored at 1e-3).

**Score.** With ``n`` samples in the step, ``n_ref`` in the reference, allowance ``k`` and
margin ``g = reference_margin_se / sqrt(n_ref)``::

    S⁺ ← clip(S⁺ + (u − g)·√n − k, 0, 1.5h)      S⁻ ← clip(S⁻ + (−u − g)·√n − k, 0, 1.5h)

``(u − g)·√n`` has unit variance from the step's own noise. The reference is a sample too: its
mean is off the truth by about ``1/sqrt(n_ref)`` standard deviations, the same for every step,
so a CUSUM fed plain ``u·√n`` would add that bias up forever. The margin ``g`` absorbs it:
for every reference whose mean lies within ``reference_margin_se`` standard errors of the
truth, each step's expected increment is at most ``−k`` on unchanged data.

**Alarm.** Drift while ``max(S⁺, S⁻) > h``. While a shift persists the score sits at its cap,
well above ``h`` (so the alert does not flap); the cap at ``1.5 h`` bounds how many steps of
unchanged data bring it back under ``h`` (about ``0.5 h / (k + g·√n)``). ``h`` is solved from the target ARL₀ with Siegmund's
approximation for a unit-variance CUSUM with drift ``−k`` (two-sided: each side gets twice the
ARL₀). So the stated ARL₀ is a lower bound that holds conditionally on the reference (within
its margin); ``bench/drift_power.py`` measures the windows between false alarms over random
references.

**State** (scores, alarm, the partial step, the last window's seq) is kept per device, model
version and statistic, and saved to the collector's database (table ``drift_sequential``)
after each evaluation tick, so a restart continues every CUSUM where it stood: when a restarted
collector first meets a device, the windows stored after the last save are read back in seq
order (:meth:`SequentialBook.catch_up`). Windows that arrive with a seq at or below the last
one folded are skipped (late windows count in the sliding window, not in the CUSUM).
"""

from __future__ import annotations

import fnmatch
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import TelemetryError
from edgedl.telemetry import decode_window

from .config import SequentialConfig
from .decision import DriftDecision
from .drift import MIN_STD
from .references import ReferenceBook, ReferenceModel
from .sliding import Contribution
from .store import Store

FloatArray = NDArray[np.float64]
SequentialKey = tuple[str, str, str, str]  # fleet, device, model, version

SIEGMUND_SHIFT = 1.166
REPLAY_LIMIT = 1000  # windows read back per device at most, after a restart
CAP = 1.5  # scores stop at 1.5 h: a few steps back under h once the data comes back


def one_sided_arl(h: float, allowance: float) -> float:
    """Siegmund's ARL of a one-sided CUSUM of unit-variance steps with mean ``−allowance``."""
    b = h + SIEGMUND_SHIFT
    two_kb = 2.0 * allowance * b
    return (math.exp(two_kb) - two_kb - 1.0) / (2.0 * allowance * allowance)


def alarm_level(windows_between_false_alarms: float, allowance: float) -> float:
    """The level ``h`` at which the two-sided CUSUM's ARL₀ is the one asked for."""
    target = 2.0 * windows_between_false_alarms  # each side alarms half as often
    lo, hi = 0.0, 1.0
    while one_sided_arl(hi, allowance) < target:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if one_sided_arl(mid, allowance) < target else (lo, mid)
    return hi


@dataclass
class CusumState:
    """One statistic's CUSUM: scores, alarm, the step being filled, steps taken."""

    plus: float = 0.0
    minus: float = 0.0
    alarmed: bool = False
    pending_sum: float = 0.0
    pending_n: float = 0.0
    steps: int = 0
    samples: float = 0.0
    last_shift: float = float("nan")

    def to_list(self) -> list[Any]:
        """A compact JSON-ready form (:meth:`from_list` reads it back)."""
        shift = self.last_shift if math.isfinite(self.last_shift) else None
        return [
            self.plus,
            self.minus,
            self.alarmed,
            self.pending_sum,
            self.pending_n,
            self.steps,
            self.samples,
            shift,
        ]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> CusumState:
        """Read :meth:`to_list`'s form."""
        plus, minus, alarmed, pending_sum, pending_n, steps, samples, shift = data
        return cls(
            float(plus),
            float(minus),
            bool(alarmed),
            float(pending_sum),
            float(pending_n),
            int(steps),
            float(samples),
            float("nan") if shift is None else float(shift),
        )


@dataclass
class SequentialDetector:
    """The CUSUMs of one device and model version, one per reference statistic."""

    cfg: SequentialConfig
    states: dict[str, CusumState] = field(default_factory=dict)
    last_seq: int = -1
    epoch: str = ""  # the spool epoch last_seq counts in (a re-imaged device starts at 0)

    def level(self, statistic: str) -> float | None:
        """The alarm level of a statistic's CUSUM, or None when it is switched off."""
        arl = self.cfg.windows_between_false_alarms
        for pattern, value in self.cfg.statistics.items():
            if fnmatch.fnmatchcase(statistic, pattern):
                arl = value
                break
        return alarm_level(arl, self.cfg.allowance) if arl > 0 else None

    def observe(
        self,
        seq: int,
        sums: NDArray[Any],
        ns: NDArray[Any],
        reference: ReferenceModel,
        epoch: str = "",
    ) -> bool:
        """Fold one window's sums and counts (rows of ``reference.stats``); False if skipped.

        Seqs count within a spool epoch: a window of another epoch (a new life of the
        device) is folded and its seqs counted from there.
        """
        if epoch != self.epoch:
            self.epoch, self.last_seq = epoch, -1
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        n_ref = reference.counts.sum(axis=1) if reference.counts.size else np.zeros(0)
        for i, stat in enumerate(reference.stats):
            if ns[i] <= 0 or not math.isfinite(float(sums[i])):
                continue
            state = self.states.setdefault(stat, CusumState())
            state.pending_sum += float(sums[i])
            state.pending_n += float(ns[i])
            if state.pending_n >= self.cfg.step_samples:
                h = self.level(stat)
                mean = float(reference.mean[i])
                if h is not None and math.isfinite(mean) and n_ref[i] > 0:
                    std = max(float(reference.std[i]), MIN_STD)
                    self.step(state, mean, std, float(n_ref[i]), h)
                state.pending_sum = state.pending_n = 0.0
        return True

    def step(self, state: CusumState, mean: float, std: float, n_ref: float, h: float) -> None:
        """Take one CUSUM step from a filled step's sum and count."""
        n = state.pending_n
        shift = (state.pending_sum / n - mean) / std
        margin = self.cfg.reference_margin_se / math.sqrt(n_ref)
        k = self.cfg.allowance
        root = math.sqrt(n)
        cap = CAP * h
        state.plus = min(max(0.0, state.plus + (shift - margin) * root - k), cap)
        state.minus = min(max(0.0, state.minus + (-shift - margin) * root - k), cap)
        state.alarmed = max(state.plus, state.minus) > h
        state.steps += 1
        state.samples += n
        state.last_shift = shift

    def decisions(self) -> list[DriftDecision]:
        """One :class:`DriftDecision` per statistic with a CUSUM (test ``cusum``)."""
        out = []
        arl_default = self.cfg.windows_between_false_alarms
        for stat, state in sorted(self.states.items()):
            h = self.level(stat)
            if h is None:
                continue
            arl = next(
                (v for p, v in self.cfg.statistics.items() if fnmatch.fnmatchcase(stat, p)),
                arl_default,
            )
            score = max(state.plus, state.minus)
            judged = state.steps > 0
            side = "up" if state.plus >= state.minus else "down"
            if not judged:
                reason = f"too few samples (a step needs {self.cfg.step_samples})"
            elif state.alarmed:
                reason = (
                    f"drift: CUSUM score {score:.3g} reached {h:.3g} ({side}; last step's "
                    f"mean shift {state.last_shift:+.3g} sd; {arl:g} windows between false "
                    "alarms expected)"
                )
            else:
                reason = f"CUSUM score {score:.3g} below {h:.3g} ({state.steps} steps)"
            out.append(
                DriftDecision(
                    statistic=stat,
                    test="cusum",
                    effect=state.last_shift if judged else None,
                    min_effect=0.0,
                    p_value=None,
                    score=score,
                    threshold=h,
                    samples=int(state.samples),
                    judged=judged,
                    is_drift=judged and state.alarmed,
                    reason=reason,
                )
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The state as JSON-ready data (:meth:`load` reads it back)."""
        return {
            "last_seq": self.last_seq,
            "epoch": self.epoch,
            "stats": {k: s.to_list() for k, s in self.states.items()},
        }

    def load(self, data: dict[str, Any]) -> None:
        """Continue from a saved state."""
        self.last_seq = int(data.get("last_seq", -1))
        self.epoch = str(data.get("epoch", ""))
        self.states = {str(k): CusumState.from_list(v) for k, v in data.get("stats", {}).items()}


class SequentialBook:
    """Every device's CUSUMs, loaded from the database on first use and saved on :meth:`flush`."""

    def __init__(self, store: Store, cfg: SequentialConfig) -> None:
        self.store = store
        self.cfg = cfg
        self._detectors: dict[SequentialKey, SequentialDetector] = {}
        self._dirty: set[SequentialKey] = set()
        self._lock = threading.Lock()

    def detector(self, key: SequentialKey) -> SequentialDetector:
        """The key's detector, continued from the database the first time it is asked for."""
        det = self._detectors.get(key)
        if det is None:
            det = self._detectors[key] = SequentialDetector(self.cfg)
            saved = self.store.sequential_state(*key)
            if saved is not None:
                det.load(saved)
        return det

    def observe(
        self, key: SequentialKey, contribution: Contribution, reference: ReferenceModel | None
    ) -> None:
        """Fold one stored window of the key (ignored without a reference or when disabled)."""
        if not self.cfg.enabled or reference is None or not reference.stats:
            return
        if self.detector(key).observe(
            contribution.seq, contribution.sums, contribution.ns, reference, contribution.epoch
        ):
            with self._lock:
                self._dirty.add(key)

    def catch_up(
        self,
        fleet: str,
        device: str,
        keys: Sequence[SequentialKey],
        references: ReferenceBook,
        fresh: int,
    ) -> int:
        """Fold a device's stored windows newer than its saved CUSUMs saw, in seq order.

        Called when a restarted collector first meets a device, before newer windows: those
        stored after the last save but never folded. Without any saved state, only the newest
        ``fresh`` windows. Returns how many windows were read.
        """
        if not self.cfg.enabled or not keys:
            return 0
        floor = min(self.detector(k).last_seq for k in keys)
        limit = REPLAY_LIMIT if floor >= 0 else fresh
        rows = self.store.windows(
            device, limit, True, newest_first=True, after_seq=floor, fleet=fleet
        )
        for row in reversed(rows):
            try:
                window = decode_window(row["payload"])
            except TelemetryError:
                continue
            for model in window.models:
                reference = references.find(model.name, model.version, model.sha256)
                contribution, _ = Contribution.from_window(window.seq, model, reference)
                key = (window.fleet, window.device, model.name, model.version)
                self.observe(key, contribution, reference)
        return len(rows)

    def decisions(self, key: SequentialKey) -> list[DriftDecision]:
        """The key's CUSUM decisions (none when disabled or never fed)."""
        det = self._detectors.get(key)
        return det.decisions() if (det is not None and self.cfg.enabled) else []

    def flush(self) -> int:
        """Save the states that changed since the last flush; how many."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        if dirty:
            self.store.save_sequential_states(
                [(key, self._detectors[key].to_dict()) for key in sorted(dirty)]
            )
        return len(dirty)


__all__ = [
    "CusumState",
    "SequentialBook",
    "SequentialDetector",
    "alarm_level",
    "one_sided_arl",
]
