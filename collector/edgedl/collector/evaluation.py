"""One evaluation: every drift figure of a sliding-window total against its reference.

A pure function of the numbers (no state, no I/O), so the monitor, the tests and the
benchmark call the same thing. The formulas are in :mod:`edgedl.collector.drift`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgedl.telemetry import LATENCY_EDGES_MS

from . import decision, drift
from .config import DriftConfig
from .decision import DriftDecision
from .references import ReferenceModel
from .sliding import Contribution, LatencyBaseline


def evaluate(
    total: Contribution,
    reference: ReferenceModel | None,
    baseline: LatencyBaseline | None,
    cfg: DriftConfig,
) -> dict[str, Any]:
    """Every drift figure of a sliding-window total against its reference (a JSON-ready dict)."""
    statistics: list[dict[str, Any]] = []
    classes: list[dict[str, Any]] = []
    confidence: list[dict[str, Any]] = []
    if reference is not None and reference.stats:
        cur = total.counts
        has = total.ns > 0
        alerting = tuple(t for t in decision.HISTOGRAM_TESTS if t in cfg.alert_on)
        judged_counts = decision.judge_counts(reference, cur, total.ns, cfg, alerting)
        figures, p_values = judged_counts.figures, judged_counts.p_values
        per_stat = judged_counts.decisions
        psi, js, ks, ws = (figures[k] for k in ("psi", "js", "ks", "wasserstein"))
        with np.errstate(invalid="ignore", divide="ignore"):
            means = total.sums / total.ns
        for i, stat in enumerate(reference.stats):
            ok = bool(has[i])
            judged = ok and bool(total.ns[i] >= cfg.min_samples)
            p = float(psi[i]) if ok else None
            decisions = per_stat[i] if ok else []
            statistics.append(
                {
                    "statistic": stat,
                    "samples": int(total.ns[i]),
                    "judged": judged,
                    "psi": p,
                    "js": float(js[i]) if ok else None,
                    "ks": float(ks[i]) if ok else None,
                    "wasserstein": float(ws[i]) if ok else None,
                    "p_values": {
                        t: _finite(float(p_values[t][i])) if ok else None
                        for t in decision.HISTOGRAM_TESTS
                    },
                    "decisions": [d.to_dict() for d in decisions],
                    "mean": float(means[i]) if ok else None,
                    "reference_mean": _finite(reference.mean[i]),
                    "status": _status(p, judged, decisions, cfg),
                }
            )
            if stat.endswith("/top1_confidence") and ok:
                shift = float(means[i] - reference.mean[i])
                confidence.append(
                    {
                        "statistic": stat,
                        "mean": float(means[i]),
                        "reference_mean": _finite(reference.mean[i]),
                        "shift": shift,
                        "judged": judged,
                    }
                )
        for output, ref_counts in sorted(reference.class_counts.items()):
            live = total.classes.get(output)
            n = float(live.sum()) if live is not None else 0.0
            if live is None or n <= 0:
                continue
            stat_value, p_value = drift.chi_square(ref_counts, live)
            cpsi = float(drift.psi(ref_counts, live))
            judged = n >= cfg.min_samples
            decided = decision.decide(
                output,
                "class_psi",
                cpsi,
                cfg.class_psi_alert,
                p_value,
                cfg.false_alarm_rate,
                int(n),
                judged,
            )
            classes.append(
                {
                    "output": output,
                    "samples": int(n),
                    "judged": judged,
                    "chi2": stat_value,
                    "p_value": p_value,
                    "psi": cpsi,
                    "counts": [int(x) for x in live],
                    "decision": decided.to_dict(),
                    "status": _status(cpsi, judged, [decided], cfg),
                }
            )
    lat = total.latency
    count = float(lat.sum())
    pct = {q: _finite(drift.percentile(lat, LATENCY_EDGES_MS, q / 100)) for q in (50, 95, 99)}
    base_p95 = None
    if baseline is not None and baseline.complete:
        base_p95 = _finite(drift.percentile(baseline.latency, LATENCY_EDGES_MS, 0.95))
    ratio = pct[95] / base_p95 if pct[95] is not None and base_p95 else None
    return {
        "reference": reference is not None,
        "samples": total.samples,
        "statistics": statistics,
        "classes": classes,
        "confidence": confidence,
        "latency": {
            "count": int(count),
            "p50_ms": pct[50],
            "p95_ms": pct[95],
            "p99_ms": pct[99],
            "baseline_p95_ms": base_p95,
            "ratio": ratio,
            "judged": ratio is not None and count >= cfg.min_samples,
        },
        "errors": {
            "requests": total.requests,
            "errors": total.errors,
            "rate": total.errors / total.requests if total.requests else None,
            "judged": total.requests >= cfg.min_samples,
        },
    }


def _status(
    psi: float | None, judged: bool, decisions: list[DriftDecision], cfg: DriftConfig
) -> str:
    """``alert`` when a decision says drift; ``watch`` when one is significant but small or
    PSI is over ``psi_watch``; else ``ok`` (or why it was not judged)."""
    if psi is None or not judged:
        return "too few samples" if psi is not None else "no data"
    if any(d.is_drift for d in decisions):
        return "alert"
    return "watch" if psi > cfg.psi_watch or any(d.significant for d in decisions) else "ok"


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None
