"""The rollout gates on real telemetry windows (encoded as devices send them)."""

from __future__ import annotations

from tests.collector.helpers import WindowMaker

from edgedl.collector.fleet.gates import Gates, awaiting_evidence, judge, version_figures
from edgedl.telemetry import encode_window


def payloads(windows: WindowMaker, **kwargs: float) -> list[bytes]:
    return [
        encode_window(windows.window(f"pi-{d}", seq, n=40, seed=seq, **kwargs))[0]
        for d in range(2)
        for seq in range(3)
    ]


def test_a_slower_version_breaches_the_latency_gates(windows: WindowMaker) -> None:
    before = version_figures(payloads(windows, latency_ms=2.0), "digits", "1")
    after = version_figures(payloads(windows, latency_ms=20.0), "digits", "1")
    assert before.requests == after.requests == 240
    assert before.p95_ms is not None and after.p95_ms is not None
    assert after.p95_ms > 5 * before.p95_ms
    breach, report = judge(Gates(max_p95_ratio=3.0), after, before.p95_ms, [], {})
    assert breach is not None and "over 3.0 x the previous version's" in breach
    assert report["judged"] and report["p95_ms"] == after.p95_ms
    breach, _ = judge(Gates(max_p95_ms=10.0, max_p95_ratio=None), after, None, [], {})
    assert breach is not None and "over the bound 10.0 ms" in breach
    assert judge(Gates(), before, before.p95_ms, [], {})[0] is None


def test_errors_drift_and_shadow_agreement_against_their_bounds(windows: WindowMaker) -> None:
    failing = version_figures(payloads(windows, errors=8), "digits", "1")
    breach, _ = judge(Gates(max_error_rate=0.05), failing, None, [], {})
    assert breach is not None and "error rate 0.200" in breach
    # another version's windows do not count, and too few requests are not judged
    assert version_figures(payloads(windows), "digits", "2").requests == 0
    breach, report = judge(Gates(min_inferences=1000), failing, None, [], {})
    assert breach is None and not report["judged"]

    healthy = version_figures(payloads(windows), "digits", "1")
    drift = [{"statistics": [{"judged": True, "psi": 0.35}], "classes": []}]
    breach, _ = judge(Gates(max_drift_psi=0.2), healthy, None, drift, {})
    assert breach is not None and "output drift PSI 0.350" in breach
    unjudged = [{"statistics": [{"judged": False, "psi": 3.0}], "classes": []}]
    assert judge(Gates(), healthy, None, unjudged, {})[0] is None

    shadow = {
        "pi-0": {"compared": 30, "agreement": 0.5},
        "pi-1": {"compared": 10, "agreement": 1.0},
    }
    breach, report = judge(Gates(min_agreement=0.9), healthy, None, [], shadow)
    assert breach is not None and "shadow agreement 0.625" in breach
    assert report["shadow_compared"] == 40
    few = {"pi-0": {"compared": 5, "agreement": 0.0}}
    assert judge(Gates(min_compared=20), healthy, None, [], few)[0] is None


def test_a_shadow_wave_waits_for_the_comparisons_its_agreement_gate_needs() -> None:
    healthy = version_figures([], "digits", "2")
    few = {"pi-0": {"compared": 5, "agreement": 0.0}, "pi-1": {"compared": 3, "agreement": 1.0}}
    enough = {"pi-0": {"compared": 15, "agreement": 1.0}, "pi-1": {"compared": 5, "agreement": 1.0}}
    gates = Gates(min_agreement=0.9, min_compared=20)
    _, report = judge(gates, healthy, None, [], few)
    assert awaiting_evidence(gates, report) == (
        "shadow agreement not judged: 8 of the 20 comparisons it needs"
    )
    breach, report = judge(gates, healthy, None, [], enough)
    assert breach is None and awaiting_evidence(gates, report) is None
    # a gate that cannot fail does not hold the wave
    _, report = judge(Gates(min_agreement=0, min_compared=20), healthy, None, [], few)
    assert awaiting_evidence(Gates(min_agreement=0, min_compared=20), report) is None
    assert awaiting_evidence(Gates(min_agreement=None), {"shadow_compared": 0}) is None
