"""Release gates: a TOML policy checked against a readiness report.

Example policy (every section optional)::

    [accuracy]
    max_drop_pts = 1.0          # reference accuracy − artifact accuracy, percentage points
    max_class_drop_pts = 5.0    # the same for every class's recall
    min_accuracy = 0.9          # the artifact's own accuracy

    [calibration]
    max_ece = 0.05

    [robustness]
    severity = 2                # every corruption at this severity ...
    min_accuracy = 0.7          # ... keeps at least this accuracy
    corruptions = ["gaussian_noise", "blur"]   # optional: only these

    [load]
    rate = 200                  # at (at least) this many requests/s ...
    max_p99_ms = 25             # ... p99 stays under this
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgedl.config import load_toml_config

from .corruptions import SEVERITIES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccuracyGate(_Strict):
    """The ``[accuracy]`` section: bounds on the drop from the reference, overall and per
    class (percentage points), and on the artifact's own accuracy; each unset bound is skipped."""

    max_drop_pts: float | None = None
    max_class_drop_pts: float | None = None
    min_accuracy: float | None = Field(default=None, ge=0, le=1)


class CalibrationGate(_Strict):
    """The ``[calibration]`` section: the highest expected calibration error allowed."""

    max_ece: float | None = Field(default=None, ge=0, le=1)


class RobustnessGate(_Strict):
    """The ``[robustness]`` section: the accuracy every corruption (or only those listed)
    must keep at one severity."""

    severity: int = Field(ge=min(SEVERITIES), le=max(SEVERITIES))
    min_accuracy: float = Field(ge=0, le=1)
    corruptions: list[str] | None = None


class LoadGate(_Strict):
    """The ``[load]`` section: the p99 latency bound at the slowest load-test step that
    reaches ``rate`` requests/s (within 5%), with no errors."""

    rate: float = Field(gt=0)
    max_p99_ms: float = Field(gt=0)


class Policy(_Strict):
    """What a bundle must meet to ship."""

    accuracy: AccuracyGate = AccuracyGate()
    calibration: CalibrationGate = CalibrationGate()
    robustness: RobustnessGate | None = None
    load: LoadGate | None = None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (:class:`~edgedl.errors.ConfigError` naming the key)."""
    return load_toml_config(Policy, path, env_prefix="EDGEDL_POLICY__", env={})


def _gate(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"gate": name, "passed": passed, "detail": detail}


def _missing(name: str, why: str) -> dict[str, Any]:
    return _gate(name, False, f"cannot be checked: {why}")


def check_policy(policy: Policy, report: dict[str, Any]) -> dict[str, Any]:
    """Every gate of ``policy`` against ``report``: ``{"passed": bool, "results": [...]}``.

    A gate whose measurement is missing from the report (no reference, no load test) fails
    and says so: a release gate that cannot be checked must not pass.
    """
    results: list[dict[str, Any]] = []
    acc, comp, art = policy.accuracy, report.get("comparison"), report["artifact"]
    if acc.min_accuracy is not None:
        ok = art["accuracy"] >= acc.min_accuracy
        results.append(_gate("accuracy", ok, f"artifact accuracy {art['accuracy']:.4f} "
                             f"{'≥' if ok else '<'} {acc.min_accuracy:g}"))  # fmt: skip
    if acc.max_drop_pts is not None:
        if comp is None:
            results.append(_missing("accuracy drop", "no float reference (--reference)"))
        else:
            drop = comp["accuracy_drop_pts"]
            ok = drop <= acc.max_drop_pts
            results.append(_gate("accuracy drop", ok, f"{drop:.2f} pts "
                                 f"{'≤' if ok else '>'} {acc.max_drop_pts:g}"))  # fmt: skip
    if acc.max_class_drop_pts is not None:
        if comp is None:
            results.append(_missing("class accuracy drop", "no float reference (--reference)"))
        else:
            bad = [c for c in comp["class_drops"] if c["drop_pts"] > acc.max_class_drop_pts]
            detail = (
                "; ".join(f"class {c['class']}: recall drops {c['drop_pts']:.2f} pts" for c in bad)
                + f" > {acc.max_class_drop_pts:g}"
                if bad
                else f"every class within {acc.max_class_drop_pts:g} pts"
            )
            results.append(_gate("class accuracy drop", not bad, detail))
    if policy.calibration.max_ece is not None:
        ece, bound = art["ece"], policy.calibration.max_ece
        results.append(_gate("calibration", ece <= bound,
                             f"ECE {ece:.4f} {'≤' if ece <= bound else '>'} {bound:g}"))  # fmt: skip
    if policy.robustness is not None:
        results.append(_robustness(policy.robustness, report["robustness"]["corruptions"]))
    if policy.load is not None:
        results.append(_load(policy.load, report.get("load")))
    return {"passed": all(r["passed"] for r in results), "results": results}


def _robustness(gate: RobustnessGate, rows: list[dict[str, Any]]) -> dict[str, Any]:
    picked = [
        r for r in rows
        if r["severity"] == gate.severity
        and (gate.corruptions is None or r["corruption"] in gate.corruptions)
    ]  # fmt: skip
    if not picked:
        return _missing("robustness", f"no corruption measured at severity {gate.severity}")
    bad = [r for r in picked if r.get("accuracy", 0.0) < gate.min_accuracy]
    if bad:
        detail = "; ".join(f"{r['corruption']}: accuracy {r.get('accuracy', 0.0):.3f}" for r in bad)
        return _gate("robustness", False,
                     f"{detail} < {gate.min_accuracy:g} at severity {gate.severity}")  # fmt: skip
    return _gate("robustness", True, f"{len(picked)} corruptions at severity {gate.severity} "
                 f"keep accuracy ≥ {gate.min_accuracy:g}")  # fmt: skip


def _load(gate: LoadGate, load: dict[str, Any] | None) -> dict[str, Any]:
    if not load:
        return _missing("load", "no load-test results (--loadtest FILE)")
    reached = [s for s in load["steps"] if s["throughput_rps"] >= gate.rate * 0.95]
    if not reached:
        best = max((s["throughput_rps"] for s in load["steps"]), default=0.0)
        return _gate("load", False,
                     f"never reached {gate.rate:g} req/s (best {best:.1f} req/s)")  # fmt: skip
    step = min(reached, key=lambda s: s["throughput_rps"])
    ok = step["p99_ms"] <= gate.max_p99_ms and not step["errors"]
    errors = f", errors {step['errors']}" if step["errors"] else ""
    return _gate("load", ok, f"at {step['throughput_rps']:.1f} req/s ({step['step']}) p99 "
                 f"{step['p99_ms']:.2f} ms {'≤' if step['p99_ms'] <= gate.max_p99_ms else '>'} "
                 f"{gate.max_p99_ms:g}{errors}")  # fmt: skip
