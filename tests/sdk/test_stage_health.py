"""Stage-health counters, figures and judgement (edgedl.stage_health)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgedl.stage_health import (
    HealthProfile,
    difference,
    health_counters,
    health_figures,
    judge,
    reference_profile,
)

STATS = {
    "vad": {"received": 160000, "passed": 64000, "unit_in": "samples", "kept_share": 0.4,
            "segments": 4},
    "asr": {"received": 64000, "passed": 4, "transcripts": 4, "words": 12,
            "confidence_sum": 2.4},
}  # fmt: skip


def test_counters_and_figures_of_a_vad_asr_pipeline():
    counters = health_counters(STATS, 16000)
    assert counters == {
        "audio_s": 10.0, "kept_s": 4.0, "segments": 4.0, "transcripts": 4.0, "words": 12.0,
        "confidence_sum": 2.4,
    }  # fmt: skip
    figures = health_figures(counters)
    assert figures == pytest.approx(
        {"kept_share": 0.4, "segments_per_min": 24.0, "words_per_segment": 3.0,
         "asr_confidence": 0.6}
    )  # fmt: skip


def test_a_pipeline_without_vad_or_asr_has_no_such_figures():
    counters = health_counters({"window": {"received": 16000, "passed": 3}}, 16000)
    assert counters == {"audio_s": 1.0}
    assert health_figures(counters) == {}


def test_difference_of_readings_and_an_agent_restart():
    before = health_counters(STATS, 16000)
    later = {k: v * 3 for k, v in before.items()}
    assert difference(later, before) == pytest.approx({k: 2 * v for k, v in before.items()})
    restarted = {k: v / 2 for k, v in before.items()}  # counters went back: a new process
    assert difference(restarted, before) == pytest.approx(restarted)


def test_judge_shares_absolutely_and_rates_relatively():
    profile = HealthProfile.model_validate(reference_profile("voice", 16000, STATS))
    same = judge(health_figures(health_counters(STATS, 16000)), profile)
    assert not any(v["alert"] for v in same.values()) and len(same) == 4
    noisy = judge({"kept_share": 0.95, "segments_per_min": 30.0}, profile)
    assert noisy["kept_share"]["alert"] and noisy["kept_share"]["drift"] == pytest.approx(0.55)
    # 30 against 24 a minute is 25% more: within the relative tolerance of 50%.
    assert not noisy["segments_per_min"]["alert"]
    assert noisy["segments_per_min"]["drift"] == pytest.approx(0.25)


def test_a_profile_is_validated():
    with pytest.raises(ValidationError):
        HealthProfile.model_validate({"pipeline": "", "counters": {}, "figures": {}})
    with pytest.raises(ValidationError):
        HealthProfile.model_validate({"pipeline": "p", "figures": {}, "surprise": 1})
