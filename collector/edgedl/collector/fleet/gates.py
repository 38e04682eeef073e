"""Health gates of a rollout: the new version's telemetry against configurable bounds.

Judged over the probation of a wave, on the devices already running the new version:

* error rate: errors / requests of the new version's windows;
* p95 latency: from the merged latency histograms of those windows, against ``max_p95_ms``
  and against ``max_p95_ratio`` times the previous version's p95 on the same devices before
  the rollout (when that baseline is known);
* output drift: the largest judged PSI of the drift monitor's device results for the new
  version, against ``max_drift_psi``;
* shadow agreement: the share of shadow requests whose top-1 class agreed with the live
  model, from the devices' ``/status`` rollout report, against ``min_agreement``.

Each figure is judged only on enough data (``min_inferences`` requests, ``min_compared``
shadow comparisons); a gate with too little data is reported as not judged. A shadow wave
is the exception (:func:`awaiting_evidence`): comparing is its purpose, so it is not promoted
on time alone while its agreement gate has not judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgedl.errors import TelemetryError
from edgedl.telemetry import LATENCY_EDGES_MS, decode_window


class Gates(BaseModel):
    """The bounds a rollout's new version must stay within (``[fleet.gates]``, per rollout)."""

    model_config = ConfigDict(extra="forbid")
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p95_ms: float | None = Field(default=None, gt=0)
    max_p95_ratio: float | None = Field(default=3.0, gt=0)
    max_drift_psi: float | None = Field(default=0.2, gt=0)
    min_agreement: float | None = Field(default=0.9, ge=0, le=1)
    min_inferences: int = Field(default=20, ge=1)
    min_compared: int = Field(default=20, ge=1)


@dataclass
class Figures:
    """What the telemetry says about one version on some devices."""

    requests: int = 0
    errors: int = 0
    latency_counts: np.ndarray[Any, Any] = field(
        default_factory=lambda: np.zeros(len(LATENCY_EDGES_MS) + 1, dtype=np.int64)
    )

    @property
    def error_rate(self) -> float | None:
        """errors / requests (None without requests)."""
        return self.errors / self.requests if self.requests else None

    @property
    def p95_ms(self) -> float | None:
        """The upper edge of the bin holding the 95th percentile (None without data)."""
        total = int(self.latency_counts.sum())
        if total == 0:
            return None
        rank = int(np.searchsorted(np.cumsum(self.latency_counts), 0.95 * total))
        edges = LATENCY_EDGES_MS
        return float(edges[min(rank, len(edges) - 1)])


def version_figures(payloads: Iterable[bytes], model: str, version: str) -> Figures:
    """Sum the windows' figures of ``model`` ``version`` (unreadable windows are skipped)."""
    figures = Figures()
    for payload in payloads:
        try:
            window = decode_window(payload)
        except TelemetryError:
            continue
        for m in window.models:
            if m.name == model and m.version == version:
                figures.requests += m.counts.requests
                figures.errors += m.counts.errors
                figures.latency_counts += np.asarray(m.latency_ms.counts, dtype=np.int64)
    return figures


def judge(
    gates: Gates,
    figures: Figures,
    baseline_p95_ms: float | None,
    drift: Iterable[Mapping[str, Any]],
    shadow: Mapping[str, Mapping[str, Any]],
) -> tuple[str | None, dict[str, Any]]:
    """``(breach or None, the figures judged)``; ``shadow`` is ``{device: comparison}``."""
    report: dict[str, Any] = {"requests": figures.requests}
    judged = figures.requests >= gates.min_inferences
    rate, p95 = figures.error_rate, figures.p95_ms
    report.update(error_rate=rate, p95_ms=p95, baseline_p95_ms=baseline_p95_ms, judged=judged)
    if judged and rate is not None and rate > gates.max_error_rate:
        return f"error rate {rate:.3f} is over the bound {gates.max_error_rate}", report
    if judged and p95 is not None and gates.max_p95_ms is not None and p95 > gates.max_p95_ms:
        return f"p95 latency {p95:.3g} ms is over the bound {gates.max_p95_ms} ms", report
    ratio = gates.max_p95_ratio
    if judged and p95 is not None and baseline_p95_ms and ratio and p95 > ratio * baseline_p95_ms:
        return (
            f"p95 latency {p95:.3g} ms is over {ratio} x the previous "
            f"version's {baseline_p95_ms:.3g} ms",
            report,
        )
    psi = _max_psi(drift)
    report["drift_psi"] = psi
    if psi is not None and gates.max_drift_psi is not None and psi > gates.max_drift_psi:
        return f"output drift PSI {psi:.3f} is over the bound {gates.max_drift_psi}", report
    compared = sum(int(c.get("compared") or 0) for c in shadow.values())
    agreed = sum(
        float(c.get("agreement") or 0.0) * int(c.get("compared") or 0) for c in shadow.values()
    )
    agreement = agreed / compared if compared else None
    report.update(shadow_compared=compared, shadow_agreement=agreement)
    if (
        gates.min_agreement is not None
        and agreement is not None
        and compared >= gates.min_compared
        and agreement < gates.min_agreement
    ):
        return (
            f"shadow agreement {agreement:.3f} with the live model is under the bound "
            f"{gates.min_agreement} ({compared} compared)",
            report,
        )
    return None, report


def awaiting_evidence(gates: Gates, report: Mapping[str, Any]) -> str | None:
    """Why a shadow wave may not pass yet: its agreement gate has too few comparisons.

    ``report`` is :func:`judge`'s. None when the gate judged, or when it cannot fail
    (``min_agreement`` unset or 0).
    """
    if not gates.min_agreement:
        return None
    compared = int(report.get("shadow_compared") or 0)
    if compared >= gates.min_compared:
        return None
    return (
        f"shadow agreement not judged: {compared} of the {gates.min_compared} comparisons it needs"
    )


def _max_psi(results: Iterable[Mapping[str, Any]]) -> float | None:
    worst: float | None = None
    for result in results:
        for item in [*result.get("statistics", []), *result.get("classes", [])]:
            psi = item.get("psi")
            if item.get("judged") and psi is not None:
                worst = psi if worst is None else max(worst, float(psi))
    return worst
