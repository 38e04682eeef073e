"""The pipelines of a running agent, built once from ``[[pipelines]]``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgedl.errors import ConfigError
from edgedl.stage_health import HEALTH_KEY, difference, health_counters

from .config import PipelineConfig
from .pipeline import Pipeline, build_pipeline
from .stream import Output

log = logging.getLogger(__name__)

EventListener = Callable[[str, list[Output]], None]


class PipelineSet:
    """Named pipelines, and whoever wants to hear their events (e.g. telemetry's /events).

    Listeners are called on the thread that fed the audio, after each chunk that completed
    events; they must be quick and must not raise (an exception is logged, so that one bad
    listener cannot stop detection).
    """

    def __init__(self, pipelines: Iterable[Pipeline]) -> None:
        self.pipelines: dict[str, Pipeline] = {}
        for p in pipelines:
            if p.name in self.pipelines:
                raise ConfigError(f"pipelines: two pipelines are named {p.name!r}")
            self.pipelines[p.name] = p
        self._listeners: list[EventListener] = []
        self._last_counters: dict[str, dict[str, float]] = {}

    @classmethod
    def from_configs(
        cls, configs: Iterable[PipelineConfig], base_dir: str | Path = "."
    ) -> PipelineSet:
        """Build every configured pipeline (loading their models); ConfigError names the one that fails."""
        return cls(build_pipeline(c, base_dir) for c in configs)

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(pipeline_name, events)`` whenever a chunk completes events."""
        self._listeners.append(listener)

    def feed(self, name: str, pcm: bytes, end: bool = False) -> list[Output]:
        """Feed s16le audio to pipeline ``name`` (KeyError if unknown); ``end`` flushes it."""
        pipeline = self.pipelines[name]
        events = pipeline.feed(pcm)
        if end:
            events += pipeline.flush()
        if events:
            for listener in self._listeners:
                try:
                    listener(name, events)
                except Exception:  # a listener must not stop detection
                    log.exception("an event listener of pipeline %s failed", name)
        return events

    def stats(self) -> dict[str, dict[str, Any]]:
        """``{pipeline: {stage: {...}}}`` for every pipeline (see :meth:`Pipeline.stats`)."""
        return {name: p.stats() for name, p in self.pipelines.items()}

    def window_figures(self) -> dict[str, dict[str, Any]]:
        """What a telemetry window carries: :meth:`stats`, and per pipeline under ``_health``
        the stage-health counters accrued since the last call (:mod:`edgedl.stage_health`).

        Called once per window by telemetry; the counters of consecutive windows add up.
        """
        out: dict[str, dict[str, Any]] = {}
        for name, pipeline in self.pipelines.items():
            stats = pipeline.stats()
            now = health_counters(stats, pipeline.sample_rate)
            before = self._last_counters.get(name, {})
            self._last_counters[name] = now
            out[name] = {HEALTH_KEY: difference(now, before), **stats}  # first: never cut
        return out
