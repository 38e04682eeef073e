"""Stage health of a speech pipeline: what its VAD and recognizer do, judged against a reference.

One computation shared by the agent (which puts per-window counters into telemetry), the
``edgedl agent run-pipeline --profile`` command (which records the reference when a pipeline
is validated) and the collector (which compares what devices report with that reference).

Counters add up across windows and devices:

* ``audio_s`` — seconds of audio the pipeline received;
* ``kept_s`` — seconds the (first) VAD kept; ``segments`` — stretches of speech it found;
* ``transcripts``, ``words``, ``confidence_sum`` — what the (first) asr stage produced.

Figures are ratios of counters: ``kept_share`` (kept_s / audio_s), ``segments_per_min``,
``words_per_segment`` and ``asr_confidence`` (mean confidence per transcript). A figure whose
denominator is zero is left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PROFILE_SCHEMA = 1

COUNTERS: tuple[str, ...] = (
    "audio_s",
    "kept_s",
    "segments",
    "transcripts",
    "words",
    "confidence_sum",
)

#: How far a figure may move from its reference before it is drift: absolute for shares
#: (kept_share, asr_confidence), relative to the reference for rates.
DEFAULT_TOLERANCES: dict[str, float] = {
    "kept_share": 0.2,
    "segments_per_min": 0.5,
    "words_per_segment": 0.5,
    "asr_confidence": 0.15,
}
RELATIVE = frozenset({"segments_per_min", "words_per_segment"})

#: Seconds of audio below which a span is not judged (too little to say anything).
MIN_AUDIO_S = 20.0

#: Key of the per-window health counters inside a pipeline's telemetry figures.
HEALTH_KEY = "_health"


def health_counters(stats: Mapping[str, Any], sample_rate: int) -> dict[str, float]:
    """Cumulative counters from a pipeline's ``stats()`` (``{stage: {...}}``).

    The pipeline's audio is what its first stage received; the VAD is the first stage with a
    ``kept_share``; the recognizer the first with ``transcripts``. Counters of a stage the
    pipeline does not have are left out.
    """
    stages = [s for s in stats.values() if isinstance(s, Mapping)]
    counters: dict[str, float] = {}
    if not stages:
        return counters
    counters["audio_s"] = float(stages[0].get("received", 0)) / sample_rate
    vad = next((s for s in stages if "kept_share" in s), None)
    if vad is not None:
        counters["kept_s"] = float(vad.get("passed", 0)) / sample_rate
        counters["segments"] = float(vad.get("segments", 0))
    asr = next((s for s in stages if "transcripts" in s), None)
    if asr is not None:
        for key in ("transcripts", "words", "confidence_sum"):
            counters[key] = float(asr.get(key, 0))
    return counters


def difference(now: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """Counters accrued between two cumulative readings (a restart starts again from zero)."""
    out = {}
    for key in COUNTERS:
        if key not in now:
            continue
        delta = float(now.get(key, 0.0)) - float(before.get(key, 0.0))
        out[key] = round(delta if delta >= 0 else float(now.get(key, 0.0)), 6)
    return out


def add(total: dict[str, float], counters: Mapping[str, Any]) -> None:
    """Add ``counters`` into ``total`` (unknown keys and non-numbers are ignored)."""
    for key in COUNTERS:
        value = counters.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0.0) + float(value)


def health_figures(counters: Mapping[str, float]) -> dict[str, float]:
    """The figures that the counters can give (see the module's docstring)."""
    audio = counters.get("audio_s", 0.0)
    segments = counters.get("segments", 0.0)
    transcripts = counters.get("transcripts", 0.0)
    figures: dict[str, float] = {}
    if audio > 0 and "kept_s" in counters:
        figures["kept_share"] = counters.get("kept_s", 0.0) / audio
        figures["segments_per_min"] = segments / (audio / 60)
    if transcripts > 0:
        figures["words_per_segment"] = counters.get("words", 0.0) / transcripts
        figures["asr_confidence"] = counters.get("confidence_sum", 0.0) / transcripts
    return figures


class HealthProfile(BaseModel):
    """A pipeline's stage-health reference: the counters and figures of a validation run."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(PROFILE_SCHEMA, ge=1, le=PROFILE_SCHEMA)
    pipeline: str = Field(min_length=1, max_length=128)
    counters: dict[str, float] = Field(default_factory=dict)
    figures: dict[str, float]
    tolerances: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TOLERANCES))


def reference_profile(name: str, sample_rate: int, stats: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-ready profile of a pipeline run (``stats`` of the whole run)."""
    counters = {k: round(v, 6) for k, v in health_counters(stats, sample_rate).items()}
    figures = {k: round(v, 6) for k, v in health_figures(counters).items()}
    profile = HealthProfile(
        schema_version=PROFILE_SCHEMA, pipeline=name, counters=counters, figures=figures
    )
    return profile.model_dump()


def judge(figures: Mapping[str, float], profile: HealthProfile) -> dict[str, dict[str, Any]]:
    """Each figure both sides have: ``{"value", "reference", "drift", "threshold", "alert"}``.

    ``drift`` is ``|value - reference|`` for shares and that over the reference for rates
    (the reference floored at 0.1, so a rare event does not divide by nearly zero).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, value in figures.items():
        reference = profile.figures.get(name)
        threshold = profile.tolerances.get(name, DEFAULT_TOLERANCES.get(name))
        if reference is None or threshold is None:
            continue
        drift = abs(value - reference)
        if name in RELATIVE:
            drift /= max(abs(reference), 0.1)
        out[name] = {
            "value": round(value, 4),
            "reference": round(reference, 4),
            "drift": round(drift, 4),
            "threshold": threshold,
            "alert": drift > threshold,
        }
    return out
