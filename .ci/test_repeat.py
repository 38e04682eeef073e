"""Run the test suite N times and say which tests failed in which run.

    python .ci/test_repeat.py --runs 3 [-- PYTEST ARGS]

A test that fails in some runs and passes in others is flaky: this is how to find one
before CI does. Each run writes JUnit XML under ``.test-repeat/`` (kept for a look
afterwards); the summary lists every test that did not pass, with the runs it failed in,
then each run's counts and time. Exits 1 when any run had a failure or an error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / ".test-repeat"


@dataclass
class Run:
    """What one pytest run gave."""

    number: int
    seconds: float
    exit_code: int
    counts: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # test id -> first line of why


def parse_junit(path: Path, run: Run) -> None:
    """Fill ``run``'s counts and failures from a JUnit XML file pytest wrote."""
    if not path.exists():
        run.failed["<pytest did not write a report>"] = f"exit code {run.exit_code}"
        return
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or child.text or "").strip().splitlines()
                run.failed[test_id] = f"{child.tag}: {message[0][:150] if message else ''}"
                break
            if child.tag == "skipped":
                outcome = "skipped"
        counts[outcome] += 1
    run.counts = counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="how many times (default 3)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    OUT.mkdir(exist_ok=True)
    runs: list[Run] = []
    for number in range(1, args.runs + 1):
        report = OUT / f"run-{number}.xml"
        report.unlink(missing_ok=True)
        print(f"== run {number} of {args.runs}", flush=True)
        started = time.monotonic()
        code = subprocess.call(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}",
             *args.pytest_args],
            cwd=ROOT,
        )  # fmt: skip
        run = Run(number, time.monotonic() - started, code)
        parse_junit(report, run)
        runs.append(run)

    print("\n== summary")
    flaky: dict[str, list[int]] = {}
    for run in runs:
        for test_id in run.failed:
            flaky.setdefault(test_id, []).append(run.number)
    if flaky:
        print("tests that did not pass (runs they failed in):")
        for test_id, numbers in sorted(flaky.items()):
            kind = "every run" if len(numbers) == len(runs) else "flaky"
            print(f"  {test_id}  runs {','.join(map(str, numbers))} ({kind})")
            for run in runs:
                if test_id in run.failed:
                    print(f"      run {run.number}: {run.failed[test_id]}")
    else:
        print("every test passed in every run")
    for run in runs:
        figures = ", ".join(f"{n} {k}" for k, n in run.counts.items() if n)
        print(f"  run {run.number}: exit {run.exit_code}, {figures}, {run.seconds:.0f} s")
    return 1 if flaky or any(r.exit_code not in (0, 5) for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
