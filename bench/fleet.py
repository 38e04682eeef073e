"""Benchmark fleet rollouts: how long a healthy rollout and an automatic rollback take.

Real parts, as in tests/e2e/test_fleet_rollout.py (whose machinery this reuses): a Mosquitto,
``edgedl collector run`` and N ``edgedl agent serve`` processes on this machine, each agent
with its own store and device id, serving the digits model (tflite-int8, signed) while a
thread sends them real digits.

  rollout    ``edgedl fleet rollout digits 2`` (bluegreen, waves 1,40%,100%) until every
             device answers with version 2 (polled on each agent), and until the collector
             marks the rollout completed.
  rollback   a shadow rollout of a version that disagrees with the live model (always class
             0): time until the collector halts it (the agreement gate after the first
             wave's probation) and until the touched device serves the previous version
             again and says so on its /status.

The probation per wave dominates both figures (it is a setting: ``--probation``); the rest is
delivery (desired state, download, verification, load) and the telemetry round trip.

Usage: python bench/fleet.py [--devices 5] [--probation 2] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the e2e machinery lives in tests/

from tests.agent.conftest import AgentProcess  # noqa: E402
from tests.conftest import EDGEDL  # noqa: E402
from tests.e2e.conftest import CollectorProcess  # noqa: E402
from tests.e2e.fleet_harness import (  # noqa: E402
    FLEET,
    Traffic,
    collector_toml,
    disagreeing_version,
    make_keys,
    served_version,
    signed_versions,
    start_device,
    wait_until,
)
from tests.mqtt_broker import MosquittoBroker  # noqa: E402

from edgedl.signing import sign_bundle  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet.json"


def machine() -> dict[str, object]:
    """CPU, cores, Python: where the figures were taken."""
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def digits_bundle(out: Path) -> Path:
    """The digits model trained and converted to tflite-int8 (TensorFlow: about a minute)."""
    from edgedl.converters import ConvertOptions, convert
    from edgedl.converters.samples import train_digits

    digits = train_digits(out / "train", epochs=30)
    result = convert(
        digits.model,
        ConvertOptions(
            target="tflite-int8",
            version="1",
            calibration=digits.train,
            validation=digits.test,
            labels=digits.labels,
            output=out / "tflite-int8",
        ),
    )
    assert result.bundle is not None
    return result.bundle.path


def cli(*args: str | Path) -> dict[str, Any]:
    proc = subprocess.run([EDGEDL, *map(str, args), "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def one_run(work: Path, bundle: Path, devices: int, probation: float) -> dict[str, float]:
    keys = make_keys(work / "keys")
    versions = signed_versions(bundle, work / "v", keys.private, ["1", "2"])
    bad = disagreeing_version(versions["1"], work / "bad", "zero")
    sign_bundle(bad, keys.private)
    broker = MosquittoBroker(work / "broker")
    broker.start()
    toml = collector_toml(work / "c", probation_s=probation, trusted=keys.public)
    collector = CollectorProcess(
        ["--mqtt", broker.url, "--db", f"sqlite:///{work / 'c.db'}", "--no-shared",
         "--client-id", "bench-collector", "--config", str(toml)],
        work / "collector.log",
    )  # fmt: skip
    agents: dict[str, AgentProcess] = {}
    started: list[AgentProcess] = []

    def factory(*args: Any, wait: bool = True, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(
            [str(a) for a in args], dict(os.environ), work / f"a{len(started)}.log"
        )
        started.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    try:
        collector.wait_ready()
        for i in range(devices):
            d = f"pi-{i}"
            agents[d] = start_device(factory, work / d, d, versions["1"], broker, keys.public)
        wait_until(
            lambda: (
                len(collector.get("/api/v1/fleet/models").get("digits", {}).get("devices", {}))
                == devices
            ),
            60,
            "devices",
        )
        cli("fleet", "publish", versions["2"], "--collector", collector.url)
        cli("fleet", "publish", bad, "--collector", collector.url)
        with Traffic(agents):
            t0 = time.monotonic()
            rid = cli(
                "fleet", "rollout", "digits", "2", "--waves", "1,40%,100%", "--collector",
                collector.url, "--option", "probation_s=1", "--option", "probation_requests=10",
            )["id"]  # fmt: skip
            wait_until(
                lambda: all(served_version(a) == "2" for a in agents.values()), 300, "v2 everywhere"
            )
            all_serving = time.monotonic() - t0
            wait_until(
                lambda: collector.get(f"/api/v1/rollouts/{rid}")["state"] == "completed",
                120,
                "done",
            )
            completed = time.monotonic() - t0

            t0 = time.monotonic()
            rid = cli(
                "fleet", "rollout", "digits", "zero", "--strategy", "shadow", "--waves",
                "1,40%,100%", "--collector", collector.url,
            )["id"]  # fmt: skip
            halted = wait_until(
                lambda: (r := collector.get(f"/api/v1/rollouts/{rid}"))["state"] != "running" and r,
                300,
                "the halt",
            )
            assert halted["state"] == "halted", halted
            to_halt = time.monotonic() - t0

            def back() -> bool:
                view = collector.get("/api/v1/fleet/models")["digits"]["devices"]["pi-0"]
                return (
                    served_version(agents["pi-0"]) == "2"
                    and (view.get("rollout") or {}).get("state") == "rolled_back"
                )

            wait_until(back, 120, "pi-0 back on version 2")
            to_back = time.monotonic() - t0
        return {
            "rollout_all_serving_s": all_serving,
            "rollout_completed_s": completed,
            "breach_to_halt_s": to_halt,
            "breach_to_previous_serving_s": to_back,
            "halt_reason": halted["reason"],
        }
    finally:
        for agent in started:
            agent.stop()
        collector.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--probation", type=float, default=2.0, help="seconds per wave")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgedl-bench-fleet-") as tmp:
        work = Path(tmp)
        bundle = digits_bundle(work / "digits")
        runs = [
            one_run(work / f"run{i}", bundle, args.devices, args.probation)
            for i in range(args.runs)
        ]
    keys = [k for k in runs[0] if k.endswith("_s")]
    summary = {
        k: {
            "median": statistics.median(r[k] for r in runs),
            "min": min(r[k] for r in runs),
            "max": max(r[k] for r in runs),
        }
        for k in keys
    }
    print(
        f"\n### Fleet rollouts ({args.devices} agents, 3 waves 1,40%,100%, probation "
        f"{args.probation:g} s per wave, {args.runs} runs)\n"
    )
    print("| measurement | median s | min s | max s |\n|---|---:|---:|---:|")
    labels = {
        "rollout_all_serving_s": "`rollout` -> all devices serving the new version",
        "rollout_completed_s": "`rollout` -> collector marks it completed",
        "breach_to_halt_s": "shadow rollout of a bad version -> halted (gate breach)",
        "breach_to_previous_serving_s": "-> the touched device back on the previous version",
    }
    for k in keys:
        s = summary[k]
        print(f"| {labels[k]} | {s['median']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    print(f"\nhalt reason: {runs[0]['halt_reason']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": machine(),
                "fleet": FLEET,
                "devices": args.devices,
                "waves": "1,40%,100%",
                "probation_s": args.probation,
                "runs": runs,
                "summary": summary,
                "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
