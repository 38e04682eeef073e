"""Stage health of the devices' speech pipelines, judged against reference profiles.

Every telemetry window carries, per pipeline, the stage-health counters accrued in that
window (``pipelines.{name}._health``: seconds of audio, seconds the VAD kept, segments,
transcripts, words, the sum of ASR confidences; :mod:`edgedl.stage_health`). The book keeps
the last ``windows`` windows that carried audio of each (fleet, device, pipeline) — a quiet
spell does not push what was heard out — sums them, and judges the
figures of the sum — VAD kept share, segments per minute, ASR confidence, words per segment
— against the pipeline's reference profile (written by ``edgedl agent run-pipeline
--profile``, registered with ``--pipeline-reference`` or ``POST /api/v1/pipeline-references``).

A sum is judged only with at least ``min_audio_s`` seconds of audio; a figure further from
its reference than its tolerance opens a ``stage`` alert (model: the pipeline, metric: the
figure), resolved when a judged sum comes back within it. Windows of agents that predate the
counters carry no ``_health`` and are skipped. The sliding sums live in memory: after a
restart the collector judges again once new windows have arrived.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgedl.errors import DataError
from edgedl.stage_health import (
    HEALTH_KEY,
    MIN_AUDIO_S,
    HealthProfile,
    add,
    health_figures,
    judge,
)
from edgedl.telemetry import TelemetryWindow

from .alerts import AlertBook, AlertSubject
from .store import Store

Key = tuple[str, str, str]  # fleet, device, pipeline


def parse_profile(data: Any, where: str = "the profile") -> HealthProfile:
    """A stage-health profile from parsed JSON; DataError naming what is wrong."""
    try:
        return HealthProfile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(f"{where} is not a stage-health profile: {field}: {first['msg']}") from exc


class PipelineHealthBook:
    """Sliding sums of stage-health counters per device and pipeline, judged and alerted."""

    def __init__(
        self,
        store: Store,
        alerts: AlertBook,
        windows: int = 6,
        min_audio_s: float = MIN_AUDIO_S,
    ) -> None:
        self._store = store
        self._alerts = alerts
        self.windows = windows
        self.min_audio_s = min_audio_s
        self._lock = threading.Lock()
        self._profiles: dict[str, HealthProfile] = {}
        for row in store.pipeline_references():
            try:
                self._profiles[row["pipeline"]] = parse_profile(row["profile"])
            except DataError:
                continue  # a row this version cannot read: judged once re-registered
        self._recent: dict[Key, deque[tuple[tuple[str, int], dict[str, float]]]] = {}
        self._dirty: dict[Key, None] = {}
        self._results: dict[Key, dict[str, Any]] = {}

    # ------------------------------------------------------------ references

    def register(self, profile: HealthProfile) -> None:
        """Store a pipeline's profile (replacing the one before) and judge against it."""
        self._store.add_pipeline_reference(profile.pipeline, profile.model_dump())
        with self._lock:
            self._profiles[profile.pipeline] = profile
            for key in self._recent:
                if key[2] == profile.pipeline:
                    self._dirty[key] = None

    def register_path(self, path: str | Path) -> HealthProfile:
        """Register the profile JSON file at ``path``."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except OSError as exc:
            raise DataError(f"cannot read pipeline reference {p}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{p} is not JSON: {exc}") from exc
        profile = parse_profile(data, str(p))
        self.register(profile)
        return profile

    def profiles(self) -> list[dict[str, Any]]:
        """Every registered profile, JSON-ready."""
        with self._lock:
            return [p.model_dump() for _, p in sorted(self._profiles.items())]

    # ------------------------------------------------------------ windows

    def fold(self, window: TelemetryWindow) -> None:
        """Take the stage-health counters of one window (each (epoch, seq) counted once)."""
        for name, figures in window.pipelines.items():
            counters = figures.get(HEALTH_KEY) if isinstance(figures, dict) else None
            if not isinstance(counters, dict) or not counters.get("audio_s"):
                continue  # no counters (an older agent), or no audio in this window
            key: Key = (window.fleet, window.device, name)
            ident = (window.epoch, window.seq)
            with self._lock:
                recent = self._recent.setdefault(key, deque(maxlen=self.windows))
                if any(i == ident for i, _ in recent):
                    continue
                total: dict[str, float] = {}
                add(total, counters)
                recent.append((ident, total))
                self._dirty[key] = None

    def evaluate(self, now: float) -> int:
        """Judge every sum that changed; raise and resolve alerts. How many were judged."""
        with self._lock:
            dirty = list(self._dirty)
            self._dirty.clear()
            work = [(k, [c for _, c in self._recent[k]], self._profiles.get(k[2])) for k in dirty]
        for key, parts, profile in work:
            total: dict[str, float] = {}
            for part in parts:
                add(total, part)
            result = self._judge(key, total, profile)
            with self._lock:
                self._results[key] = result
            self._alert(key, result, now)
        return len(work)

    def _judge(
        self, key: Key, total: dict[str, float], profile: HealthProfile | None
    ) -> dict[str, Any]:
        fleet, device, pipeline = key
        figures = health_figures(total)
        judged = profile is not None and total.get("audio_s", 0.0) >= self.min_audio_s
        verdicts = judge(figures, profile) if profile is not None else {}
        return {
            "fleet": fleet,
            "device": device,
            "pipeline": pipeline,
            "windows": len(self._recent[key]),
            "counters": {k: round(v, 4) for k, v in total.items()},
            "figures": {k: round(v, 4) for k, v in figures.items()},
            "reference": profile.figures if profile is not None else None,
            "judged": judged,
            "verdicts": verdicts,
        }

    def _alert(self, key: Key, result: dict[str, Any], now: float) -> None:
        fleet, device, pipeline = key
        for figure, v in result["verdicts"].items():
            subject = AlertSubject("stage", "device", fleet, device, pipeline, None, figure)
            self._alerts.observe(
                subject,
                v["drift"],
                v["threshold"],
                breached=result["judged"] and v["alert"],
                judged=result["judged"],
                message=(
                    f"{fleet}/{device}: pipeline {pipeline} {figure} = {v['value']:.3g}, "
                    f"reference {v['reference']:.3g} (drift {v['drift']:.3g} > {v['threshold']:g})"
                ),
                now=now,
            )

    def results(self, fleet: str | None = None, device: str | None = None) -> list[dict[str, Any]]:
        """The latest judgement of every (fleet, device, pipeline) that matches."""
        with self._lock:
            items = sorted(self._results.items())
        return [
            r
            for (f, d, _), r in items
            if (fleet is None or f == fleet) and (device is None or d == device)
        ]
