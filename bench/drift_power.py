"""Benchmark drift detection: false alarms and detection power, single window and sequential.

A seeded simulation. Each trial draws a reference of ``n_ref`` rows of a two-feature tabular
input (standard normals with correlation 0.5) and bins it as the product does: ``Profile.
from_reference`` (10 reference-quantile bins plus two open bins per statistic: the features,
the per-sample mean, std, min and max over them, and the reconstruction error of the PCA it
fits, ``pca_error``), laid out by ``ReferenceModel.from_profile``. A current window of
``n_cur`` rows is binned on those edges (``Profile.observe``, the agent's code path) under
each scenario:

  unchanged                 the reference's distribution
  mean +0.1/+0.25/+0.5 sd   feature 0 shifted
  scale x1.25               feature 0's standard deviation times 1.25
  correlation 0.5 -> 0      the features independent (both marginals unchanged)

**Single window**: the collector's decision per test (``edgedl.collector.decision``: PSI, JS,
binned KS, normed Wasserstein; p below ``false_alarm_rate`` 0.01 AND the effect at least its
minimum, the collector's defaults), reported as "significant / decision" rates. False alarms
are counted over the seven continuous statistics of every unchanged trial; detection on
feature 0 (correlation: on either feature, on the per-sample mean/std, and on pca_error).
Evidently's default test, on the raw samples of feature 0 (feature 0 or 1 for correlation):
two-sample KS p < 0.05 when the reference has at most 1,000 rows, else normed Wasserstein
(``scipy.stats.wasserstein_distance / std(ref)``) >= 0.1 (so Wasserstein at every size here).

**Sequential**: ``edgedl.collector.sequential.SequentialDetector`` (the collector's defaults:
1,000 windows between false alarms, steps of 200 samples, allowance 0.5, reference margin 1.5
standard errors) on feature 0's mean, one step per window. Window sums are drawn from their
exact distribution (the mean of ``n_cur`` normals) instead of binning every row. Unchanged
data: ``--null-windows`` windows per trial; the mean windows between false alarms is all
windows over all alarm onsets. Shifts: windows until the first alarm (at most 50).

Usage: python bench/drift_power.py [--trials 200] [--null-windows 2500]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import ks_2samp, wasserstein_distance

from edgedl.collector import decision, drift
from edgedl.collector.config import DriftConfig
from edgedl.collector.decision import DriftDecision
from edgedl.collector.references import ReferenceModel
from edgedl.collector.sequential import SequentialDetector
from edgedl.profile import Profile

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "drift_power.json"
SIZES = [(2000, 200), (2000, 400), (2000, 2000), (20000, 20000)]
RHO = 0.5
CORRELATION = "correlation 0.5 -> 0"
SCENARIOS = [
    "unchanged",
    "mean +0.1 sd",
    "mean +0.25 sd",
    "mean +0.5 sd",
    "scale x1.25",
    CORRELATION,
]
CORRELATION_ROWS = {
    f"{CORRELATION}: per-feature statistics": ["feature[0]", "feature[1]"],
    f"{CORRELATION}: per-sample mean/std over the features": ["mean", "std"],
    f"{CORRELATION}: PCA reconstruction error": ["pca_error"],
}
SHIFTS = {"mean +0.1 sd": 0.1, "mean +0.25 sd": 0.25, "mean +0.5 sd": 0.5}
CONTINUOUS = ["feature[0]", "feature[1]", "mean", "std", "min", "max", "pca_error"]
TESTS = list(decision.HISTOGRAM_TESTS)
MAX_WINDOWS = 50


def sample(rng: np.random.Generator, scenario: str, n: int) -> np.ndarray:
    """``n`` rows of the two features (correlation 0.5, unit variances) under a scenario."""
    x = rng.standard_normal((n, 2))
    if scenario != CORRELATION:
        x[:, 1] = RHO * x[:, 0] + np.sqrt(1 - RHO**2) * x[:, 1]
    if scenario in SHIFTS:
        x[:, 0] += SHIFTS[scenario]
    elif scenario == "scale x1.25":
        x[:, 0] *= 1.25
    return x


def flags(
    reference: ReferenceModel, live: Profile, cfg: DriftConfig
) -> dict[str, dict[str, DriftDecision]]:
    """Per statistic (short name) and test: the collector's decision."""
    current = drift.pad_counts(
        [live.histograms[s].counts for s in reference.stats], reference.width
    )
    decided = decision.judge_counts(reference, current, current.sum(axis=1), cfg).decisions
    return {
        stat.rsplit("/", 1)[1]: {d.test: d for d in row}
        for stat, row in zip(reference.stats, decided, strict=True)
    }


def evidently_default(ref: np.ndarray, cur: np.ndarray) -> bool:
    """Evidently's default numeric-column test on raw samples (chosen by the reference's size)."""
    if ref.size <= 1000:
        return bool(ks_2samp(ref, cur).pvalue < 0.05)
    return bool(wasserstein_distance(ref, cur) / np.std(ref) >= 0.1)


def single_window(n_ref: int, n_cur: int, trials: int, seed: int) -> dict[str, Any]:
    """Rates per scenario and test at one pair of sample sizes."""
    cfg = DriftConfig()
    counts: dict[str, dict[str, list[int]]] = {}
    totals: dict[str, int] = {}
    rows = ["unchanged", *SCENARIOS[1:-1], *CORRELATION_ROWS]
    noise: dict[str, list[float]] = {t: [] for t in TESTS}
    for row in rows:
        counts[row] = {t: [0, 0] for t in [*TESTS, "evidently"]}
        totals[row] = 0
    for trial in range(trials):
        rng = np.random.default_rng([seed, n_ref, n_cur, trial])
        ref = sample(rng, "unchanged", n_ref)
        profile = Profile.from_reference({"x": ref}, {}, bins=10)
        reference = ReferenceModel.from_profile("sim", "1", "0" * 64, profile)
        for scenario in SCENARIOS:
            cur = sample(rng, scenario, n_cur)
            live = profile.empty_like()
            live.observe({"x": cur}, {})
            got = flags(reference, live, cfg)
            if scenario == "unchanged":
                groups = {"unchanged": [[s] for s in CONTINUOUS]}
                raw = [evidently_default(ref[:, j], cur[:, j]) for j in (0, 1)]
            elif scenario == CORRELATION:
                groups = {row: [stats] for row, stats in CORRELATION_ROWS.items()}
                raw = [any(evidently_default(ref[:, j], cur[:, j]) for j in (0, 1))]
            else:
                groups = {scenario: [["feature[0]"]]}
                raw = [evidently_default(ref[:, 0], cur[:, 0])]
            for row, units in groups.items():
                for unit in units:
                    totals[row] += 1
                    for test in TESTS:
                        counts[row][test][0] += any(got[s][test].significant for s in unit)
                        counts[row][test][1] += any(got[s][test].is_drift for s in unit)
            if scenario == "unchanged":
                for s in ("feature[0]", "feature[1]"):
                    for test in TESTS:
                        noise[test].append(got[s][test].effect or 0.0)
            for row in groups:
                if row in CORRELATION_ROWS and "per-feature" not in row:
                    continue  # Evidently's per-column test: the per-feature row only
                counts[row]["evidently"][1] += sum(raw)
    out: dict[str, Any] = {
        "noise": {
            t: {"mean": float(np.mean(v)), "p99": float(np.quantile(v, 0.99))}
            for t, v in noise.items()
        }
    }
    for row in rows:
        n = totals[row]
        ev_n = 2 * trials if row == "unchanged" else trials
        out[row] = {
            "decisions": n,
            **{
                t: {"significant": counts[row][t][0] / n, "decision": counts[row][t][1] / n}
                for t in TESTS
            },
            "evidently_default": (
                None
                if row in CORRELATION_ROWS and "per-feature" not in row
                else counts[row]["evidently"][1] / ev_n
            ),
        }
    return out


def sequential(n_ref: int, n_cur: int, trials: int, null_windows: int, seed: int) -> dict[str, Any]:
    """Windows between false alarms and windows to detect, for feature 0's mean."""
    cfg = DriftConfig().sequential
    stat = "input/x/feature[0]"
    alarms = windows = 0
    to_detect: dict[str, list[int]] = {s: [] for s in SHIFTS}
    for trial in range(trials):
        rng = np.random.default_rng([seed + 1, n_ref, n_cur, trial])
        ref = rng.standard_normal((n_ref, 2))
        profile = Profile.from_reference({"x": ref}, {}, bins=10)
        reference = ReferenceModel.from_profile("sim", "1", "0" * 64, profile)
        row = reference.stats.index(stat)
        ns = np.zeros(len(reference.stats))
        ns[row] = n_cur
        sums = np.zeros(len(reference.stats))
        scenarios: list[tuple[str, float, int]] = [("unchanged", 0.0, null_windows)]
        scenarios += [(name, shift, MAX_WINDOWS) for name, shift in SHIFTS.items()]
        for name, shift, count in scenarios:
            det = SequentialDetector(cfg)
            means = shift + rng.standard_normal(count) / np.sqrt(n_cur)
            was = False
            for t in range(count):
                sums[row] = means[t] * n_cur
                det.observe(t, sums, ns, reference)
                now = det.states[stat].alarmed
                if name == "unchanged":
                    alarms += now and not was
                    was = now
                elif now:
                    to_detect[name].append(t + 1)
                    break
            else:
                if name != "unchanged":
                    to_detect[name].append(MAX_WINDOWS + 1)
        windows += null_windows
    out: dict[str, Any] = {
        "windows": windows,
        "false_alarms": alarms,
        "windows_between_false_alarms": windows / alarms if alarms else None,
        "false_alarm_rate_per_window": alarms / windows,
    }
    for name, ts in to_detect.items():
        arr = np.array(ts)
        out[name] = {
            "median_windows_to_detect": float(np.median(arr))
            if np.median(arr) <= MAX_WINDOWS
            else None,
            "detected_within_10": float(np.mean(arr <= 10)),
            "detected_within_50": float(np.mean(arr <= MAX_WINDOWS)),
        }
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def print_tables(results: dict[str, Any]) -> None:
    """Markdown tables of the single-window and sequential results."""
    print("\nSingle window: significant / decision (p < 0.01 AND effect >= minimum)\n")
    head = "| n_ref / n_cur | scenario | PSI | JS | KS (binned) | Wasserstein | Evidently default |"
    print(head)
    print("|" + "---|" * 7)
    for size, rows in results["single_window"].items():
        for row, r in rows.items():
            if row == "noise":
                continue
            cells = [f"{_pct(r[t]['significant'])} / {_pct(r[t]['decision'])}" for t in TESTS]
            print(f"| {size} | {row} | {' | '.join(cells)} | {_pct(r['evidently_default'])} |")
    print("\nNoise on unchanged data (features 0 and 1): mean / 99th percentile\n")
    print("| n_ref / n_cur | PSI | JS | KS (binned) | Wasserstein |")
    print("|" + "---|" * 5)
    for size, rows in results["single_window"].items():
        cells = [f"{rows['noise'][t]['mean']:.3f} / {rows['noise'][t]['p99']:.3f}" for t in TESTS]
        print(f"| {size} | {' | '.join(cells)} |")
    print("\nSequential (CUSUM on feature 0's mean)\n")
    print(
        "| n_ref / n_cur | mean windows between false alarms | false alarms per window "
        "| +0.1 sd: median windows, within 10 | +0.25 sd | +0.5 sd |"
    )
    print("|" + "---|" * 6)
    for size, s in results["sequential"].items():
        between = s["windows_between_false_alarms"]
        shown = f"{between:.0f}" if between else f"> {s['windows']} (none)"
        cells = []
        for name in SHIFTS:
            med = s[name]["median_windows_to_detect"]
            cells.append(f"{med:g}, {_pct(s[name]['detected_within_10'])}" if med else "–")
        print(
            f"| {size} | {shown} ({s['false_alarms']} in {s['windows']}) "
            f"| {_pct(s['false_alarm_rate_per_window'])} | {' | '.join(cells)} |"
        )


def main() -> None:
    """Run the simulation, print the tables, write the JSON results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--null-windows", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, Any] = {"single_window": {}, "sequential": {}}
    for n_ref, n_cur in SIZES:
        size = f"{n_ref} / {n_cur}"
        results["single_window"][size] = single_window(n_ref, n_cur, args.trials, args.seed)
        results["sequential"][size] = sequential(
            n_ref, n_cur, args.trials, args.null_windows, args.seed
        )
    results["config"] = {
        "trials": args.trials,
        "null_windows": args.null_windows,
        "seed": args.seed,
        "bins": 10,
        "drift": DriftConfig().model_dump(),
        "seconds": round(time.perf_counter() - started, 1),
        "python": platform.python_version(),
    }
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['config']['seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()
