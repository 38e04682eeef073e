"""``edgedl demo --loop``: the demo's story carried on to the fix and back.

After the plain demo's drift alert, the agent (sampling on) has sent samples of what it saw to
the collector; the demo's application sends the true labels of half of its requests late, by
prediction id, to the agent's labels API; the collector shows real and estimated accuracy
fall. The demo exports the samples (``edgedl collector export``), fine-tunes the digits model
on them plus its original training data (:mod:`edgedl.demo.retrain`), converts, signs,
publishes and rolls the new version out with ``edgedl fleet rollout --strategy canary``, waits
until the agent serves it, and streams the shifted digits again until the collector shows
the real accuracy recovered. The rollout's completion resolves the old version's alerts; the
new version's reference profile is made from the field samples it was retrained for, so the
same shifted stream is no drift against it.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from numpy.typing import NDArray

from edgedl.errors import ConfigError
from edgedl.telemetry import desired_topic

from .processes import Child, clear_retained, edgedl_command, pick_port
from .story import (
    DEVICE,
    FLEET,
    MODEL,
    TELEMETRY_INTERVAL_S,
    Demo,
    _answers,
    _drift_alerts,
)

T = TypeVar("T")

#: Share of the application's requests whose true labels it sends back (late).
LABELLED_SHARE = 0.5
#: Real accuracy under which the collector raises an accuracy alert.
ACCURACY_BOUND = 0.75
#: The sampling policy of the demo's agent (``[sampling]``): every low-confidence answer and a
#: random share of the others, within an hourly and an on-disk bound.
SAMPLING_RATE = 0.5
LOW_CONFIDENCE = 0.6
MAX_SAMPLES_PER_HOUR = 5000
#: Passes over the held-out digits, shifted, after the alert and after the rollout.
FIELD_PASSES = 5
#: Epochs of fine-tuning (from version 1's weights).
FINE_TUNE_EPOCHS = 10
#: The canary on the device: share of requests for the new version, good ones to promote it.
CANARY_SHARE = 0.5
PROMOTE_AFTER = 30
#: Samples a drift judgement needs: more than the plain demo's, so that the fleet's output drift
#: gate does not read the noise of a few hundred digits as drift of the new version.
LOOP_MIN_SAMPLES = 400
#: Seconds the fleet watches the new version before it completes the rollout.
FLEET_PROBATION_S = 5.0
#: Bounds on each wait of the loop (seconds); a loaded machine is slow, not stuck.
WAIT_S = 180.0
#: The shift: harsher than the plain demo's, so that the old model gets a third of it wrong.
CONTRAST, BRIGHTNESS, NOISE = 0.3, 0.55, 0.1
SHIFT = f"contrast x{CONTRAST}, brightness +{BRIGHTNESS}, noise σ {NOISE}"

AGENT_TOML = """\
# Written by `edgedl demo --loop`.
[telemetry]
spool_path = "{spool}"
keepalive_s = 5
session_expiry_s = 60
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[store]
path = "{store}"

[security]
trusted_keys = ["{trusted}"]

[fleet]
updates = true
min_free_mb = 1
retry_min_s = 0.2
retry_max_s = 1.0
status_interval_s = 0.5

[sampling]
rate = {rate}
low_confidence = {low}
max_per_hour = {per_hour}
max_disk_bytes = 20000000
# Labels arrive in bursts (a POST of many): room for them while the spool writes.
queue_size = 5000
"""
COLLECTOR_TOML = """\
# Written by `edgedl demo --loop`.
[mqtt]
session_expiry_s = 60

[alerts]
accuracy_below = {bound}
accuracy_min_labels = 20

[fleet]
artifacts_path = "{artifacts}"
trusted_keys = ["{trusted}"]
tick_s = 0.2
probation_s = {probation}
arrival_timeout_s = {wait}

[fleet.gates]
min_inferences = 5
# A 2-core machine running training, an agent and a collector: latency says little here.
max_p95_ratio = 50.0
"""


def shift(x: NDArray[Any], rng: np.random.Generator) -> NDArray[Any]:
    """The demo's shifted digits: a dirty lens in a brighter room."""
    noise = rng.normal(0, NOISE, x.shape)
    return np.clip(CONTRAST * x + BRIGHTNESS + noise, 0, 1).astype(np.float32)


@dataclass
class Asked:
    """The application's requests: their ids, true labels and the versions that answered."""

    ids: list[str] = field(default_factory=list)
    truth: list[list[int]] = field(default_factory=list)
    correct: int = 0
    samples: int = 0
    versions: set[str] = field(default_factory=set)
    labelled: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.samples, 1)


class LoopDemo(Demo):
    """The demo with ``--loop``: from the drift alert to a retrained model serving."""

    keys: Path
    agent: Child
    timeline: list[tuple[float, str]]

    def say(self, text: str) -> None:
        """Print the next numbered step, and note when it started (for the summary)."""
        if not hasattr(self, "timeline"):
            self.timeline = []
        self.timeline.append((time.time(), text))
        super().say(text)

    def _story(self, workdir: Path) -> None:
        mqtt_url = self._broker(workdir)
        bundle, (x, y) = self._train_and_convert(workdir)
        self.keys = self._keys(workdir)
        self._run("sign", str(bundle), "--key", str(self.keys / "release.key"))
        url = self._loop_collector(workdir, mqtt_url)
        self._publish(url, bundle)
        # A desired state left retained on a shared broker by an earlier run names a collector
        # that is gone: the agent would chase it. Cleared now, and again at the end.
        desired = desired_topic(FLEET, DEVICE)
        clear_retained(mqtt_url, desired)
        try:
            self._loop(workdir, url, mqtt_url, bundle, x, y)
        finally:
            clear_retained(mqtt_url, desired)

    def _loop(
        self,
        workdir: Path,
        url: str,
        mqtt_url: str,
        bundle: Path,
        x: NDArray[Any],
        y: NDArray[Any],
    ) -> None:
        agent_url = self._loop_agent(workdir, mqtt_url, bundle)
        rng = np.random.default_rng(0)
        summary: dict[str, Any] = {"workdir": str(workdir), "collector": url}

        t0 = time.time()
        clean = self._ask(agent_url, x, y)
        self.say(f"streamed the {len(x)} held-out digits: agent accuracy {clean.accuracy:.1%}")
        self._label(agent_url, clean, "clean")
        self._show_accuracy(url, t0, None, clean, "clean digits")

        self.say(f"streaming shifted digits ({SHIFT}) until the collector raises a drift alert")
        t_shift = time.time()
        shifted, alert = self._until_alert(agent_url, url, x, y, rng)
        t_alert = float(alert["opened_at"])
        self.say(
            f"[bold red]drift alert fired[/]: {alert['metric']} = {alert['value']:.3f} "
            f"> {alert['threshold']:.3f} on {DEVICE} {MODEL} {alert['version']}"
        )
        field_asked = self._ask(agent_url, *_passes(x, y, rng, FIELD_PASSES))
        self.say(
            f"the field goes on: {field_asked.samples} more shifted digits, agent accuracy "
            f"{field_asked.accuracy:.1%}"
        )
        for asked in (shifted, field_asked):
            self._label(agent_url, asked, "shifted")
        before = self._show_accuracy(url, t_shift, None, _merged(shifted, field_asked), "shifted")
        accuracy_alert = self._wait(
            lambda: _open_alerts(url, "accuracy", "1"), "an accuracy alert on version 1"
        )[0]
        self.say(f"[bold red]accuracy alert[/]: {accuracy_alert['message']}")

        samples, fielded = self._export(workdir, t_shift)
        report = self._retrain(workdir, samples, fielded)
        v2 = self._convert_v2(workdir)
        self._run("sign", str(v2), "--key", str(self.keys / "release.key"))
        self._publish(url, v2)
        rollout = self._rollout(url, agent_url, x, rng)
        t_rollout = time.time()

        after = self._ask(agent_url, *_passes(x, y, rng, FIELD_PASSES))
        self.say(
            f"shifted digits through version 2: agent accuracy {after.accuracy:.1%} "
            f"(version 1 had {field_asked.accuracy:.1%})"
        )
        self._label(agent_url, after, "shifted")
        recovered = self._show_accuracy(url, t_rollout, "2", after, "shifted, version 2")
        t_recovered = time.time()
        drift_v2 = self._drift_of_v2(url)
        resolved = [a for a in _alerts(url) if a["version"] == "1" and a["state"] == "resolved"]
        still_open = _open_alerts(url, None, None)
        self.say(
            f"alerts: {len(resolved)} of version 1 resolved by the rollout; "
            f"open now: {len(still_open)}"
            + "".join(f"\n    open: {a['kind']} {a['message']}" for a in still_open)
        )
        elapsed = t_recovered - t_alert
        if recovered["accuracy"] < ACCURACY_BOUND:
            raise ConfigError(
                f"version 2's real accuracy {recovered['accuracy']:.1%} is still under "
                f"{ACCURACY_BOUND:.0%}: the retraining did not recover it"
            )
        self.say(
            f"[bold green]accuracy recovered[/] {elapsed:.0f} s after the drift alert "
            f"(real {recovered['accuracy']:.1%} on version 2, was {before['accuracy']:.1%})"
        )
        summary.update(
            shifted_at=t_shift,
            rollout_done_at=t_rollout,
            alert=alert,
            accuracy_alert=accuracy_alert,
            samples_exported=samples[1],
            labelled_samples=samples[2],
            retrain=report,
            rollout=rollout,
            accuracy_before=before,
            accuracy_after=recovered,
            agent_accuracy={
                "clean": clean.accuracy,
                "shifted_v1": field_asked.accuracy,
                "shifted_v2": after.accuracy,
            },
            drift_v2=drift_v2,
            resolved_alerts=[a["id"] for a in resolved],
            open_alerts=still_open,
            alert_to_recovered_s=elapsed,
            steps=[{"at_s": round(t - t_alert, 1), "step": what} for t, what in self.timeline],
        )
        (workdir / "loop-summary.json").write_text(
            json.dumps(summary, indent=2, default=str), encoding="utf-8"
        )
        self.note(f"summary: {workdir / 'loop-summary.json'}")
        self.console.print(f"    dashboard: [bold underline]{url}/[/]")
        if self.options.keep:
            from .story import _wait_forever

            self.console.print("    [bold]--keep[/]: everything stays up; press Ctrl-C")
            _wait_forever()

    # -- set-up ------------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 600) -> str:
        """Run ``edgedl ARGS``; its output, or :class:`ConfigError` with its error line."""
        try:
            done = subprocess.run(
                [*edgedl_command(), *args], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise ConfigError(f"edgedl {args[0]} took more than {timeout:.0f} s") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise ConfigError(f"edgedl {' '.join(args[:2])} failed: {why}")
        self.note(f"$ edgedl {' '.join(_short(a) for a in args)}")
        return done.stdout

    def _keys(self, workdir: Path) -> Path:
        keys = workdir / "keys"
        self.say("a release key pair: every bundle the device accepts is signed with it")
        self._run("keys", "generate", "release", "--dir", str(keys), "--force")
        return keys

    def _loop_collector(self, workdir: Path, mqtt_url: str) -> str:
        config = COLLECTOR_TOML.format(
            bound=ACCURACY_BOUND,
            artifacts=workdir / "artifacts",
            trusted=self.keys / "release.pub",
            probation=FLEET_PROBATION_S,
            wait=WAIT_S,
        )
        return self._start_collector(
            workdir, mqtt_url, config, LOOP_MIN_SAMPLES,
            f", accuracy alert under {ACCURACY_BOUND:.0%}, fleet rollouts of signed bundles",
        )  # fmt: skip

    def _publish(self, collector_url: str, bundle: Path) -> None:
        self.say(f"publishing {bundle.name} to the collector (registers its reference profile)")
        out = self._run("fleet", "publish", str(bundle), "--collector", collector_url)
        self.note(out.strip().splitlines()[-1] if out.strip() else "published")

    def _loop_agent(self, workdir: Path, mqtt_url: str, bundle: Path) -> str:
        port = pick_port(self.options.agent_port)
        config = workdir / "agent.toml"
        config.write_text(
            AGENT_TOML.format(
                spool=workdir / "agent-spool.db",
                store=workdir / "agent-store",
                trusted=self.keys / "release.pub",
                rate=SAMPLING_RATE,
                low=LOW_CONFIDENCE,
                per_hour=MAX_SAMPLES_PER_HOUR,
            ),
            encoding="utf-8",
        )
        self.agent = Child(
            "agent",
            [
                *edgedl_command(), "agent", "serve", "--config", str(config),
                "--model", str(bundle), "--port", str(port), "--mqtt", mqtt_url,
                "--fleet", FLEET, "--device", DEVICE,
                "--telemetry-interval", str(TELEMETRY_INTERVAL_S),
            ],
            workdir / "agent.log",
        )  # fmt: skip
        self.children.append(self.agent)
        url = f"http://127.0.0.1:{port}"
        self.agent.wait_until(lambda: _answers(f"{url}/v2/health/ready"), timeout=60)
        self.say(
            f"agent up (pid {self.agent.pid}) on [bold]{url}[/]: fleet {FLEET}, device {DEVICE}; "
            f"follows the fleet's rollouts; sampling on: every answer under {LOW_CONFIDENCE:.0%} "
            f"confidence and {SAMPLING_RATE:.0%} of the others, at most "
            f"{MAX_SAMPLES_PER_HOUR} an hour"
        )
        return url

    # -- the application ---------------------------------------------------------------------

    def _ask(self, agent_url: str, x: NDArray[Any], y: NDArray[Any]) -> Asked:
        """Send ``x`` in requests of 4; remember every answer's id and true labels."""
        from edgedl.client import AgentClient

        asked = Asked()
        with AgentClient(agent_url) as client:
            for i in range(0, len(x), 4):
                self._ask_one(client, x[i : i + 4], y[i : i + 4], asked)
        return asked

    def _ask_one(self, client: Any, x: NDArray[Any], y: NDArray[Any], asked: Asked) -> None:
        answer = client.predict(MODEL, x)
        predicted = np.argmax(next(iter(answer.outputs.values())), axis=-1)
        asked.ids.append(answer.id or "")
        asked.truth.append([int(t) for t in y])
        asked.correct += int(np.sum(predicted == y))
        asked.samples += len(y)
        if answer.model_version:
            asked.versions.add(str(answer.model_version))

    def _label(self, agent_url: str, asked: Asked, what: str) -> None:
        """Send the true labels of a random half of the requests, shuffled, by prediction id."""
        from edgedl.client import AgentClient

        chosen = random.Random(len(asked.ids)).sample(
            range(len(asked.ids)), round(len(asked.ids) * LABELLED_SHARE)
        )
        counts: dict[str, int] = {}
        with AgentClient(agent_url) as client:
            for start in range(0, len(chosen), 50):
                batch = [(asked.ids[i], asked.truth[i]) for i in chosen[start : start + 50]]
                for status, n in client.labels(batch)["counts"].items():
                    counts[status] = counts.get(status, 0) + n
        labelled = sum(len(asked.truth[i]) for i in chosen)
        asked.labelled = labelled
        self.note(
            f"the application sends the true labels of {len(chosen)} of its {len(asked.ids)} "
            f"{what} requests ({labelled} digits) late, by prediction id: POST /v2/labels "
            f"{counts}"
        )

    def _until_alert(
        self,
        agent_url: str,
        collector_url: str,
        x: NDArray[Any],
        y: NDArray[Any],
        rng: np.random.Generator,
    ) -> tuple[Asked, dict[str, Any]]:
        from edgedl.client import AgentClient

        asked = Asked()
        deadline = time.monotonic() + WAIT_S
        next_poll = 0.0
        with AgentClient(agent_url) as client:
            while time.monotonic() < deadline:
                xs = shift(x, rng)
                for i in range(0, len(x), 4):
                    self._ask_one(client, xs[i : i + 4], y[i : i + 4], asked)
                    if time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + 1.0
                        alerts = _drift_alerts(collector_url, DEVICE)
                        if alerts:
                            self.note(f"{asked.samples} shifted digits sent")
                            return asked, alerts[-1]
        raise ConfigError(f"no drift alert after {WAIT_S:.0f} s of shifted digits")

    def _show_accuracy(
        self, url: str, since: float, version: str | None, asked: Asked, what: str
    ) -> dict[str, Any]:
        """Wait until the collector holds the labels just sent; print real and estimated."""
        want = asked.labelled
        params: dict[str, Any] = {"fleet": FLEET, "device": DEVICE, "since": since}
        if version is not None:
            params["version"] = version

        def report() -> dict[str, Any] | None:
            overall = _get(url, "/api/v1/accuracy", **params)["overall"]
            return overall if overall["labelled"] >= want and overall["estimated"] else None

        overall = self._wait(report, f"{want} labels of the {what} requests in the collector")
        est = overall["estimated"]
        self.say(
            f"collector, {what}: real accuracy [bold]{overall['accuracy']:.1%}[/] on "
            f"{overall['labelled']} late labels, estimated {est['accuracy']:.1%} "
            f"[{est['low']:.1%}, {est['high']:.1%}] from {est['predictions']} confidences "
            "(GET /api/v1/accuracy, as the dashboard shows them)"
        )
        return dict(overall)

    # -- the fix -----------------------------------------------------------------------------

    def _export(self, workdir: Path, since: float) -> tuple[tuple[Path, int, int], Path]:
        """Export the field's samples: all of them (the new reference) and the labelled ones."""
        db = f"sqlite:///{workdir / 'collector.db'}"
        out = workdir / "export"
        out.mkdir(exist_ok=True)
        labelled, everything = out / "labelled.npz", out / "field.npz"
        base = ["collector", "export", "--db", db, "--fleet", FLEET, "--device", DEVICE,
                "--since", f"{since:.3f}"]  # fmt: skip

        def stable() -> int | None:
            # Samples and their labels travel on their own: wait until two reads agree.
            counts = []
            for _ in range(2):
                counts.append(self._count(*base, "--labelled", "--output", str(labelled)))
                time.sleep(1.0)
            return counts[0] if counts[0] == counts[1] and counts[0] >= 20 else None

        self.say("exporting the samples the agent sent since the shift: edgedl collector export")
        n_labelled = self._wait(stable, "labelled samples in the collector")
        self._run(*base, "--labelled", "--output", str(labelled))
        self._run(*base, "--output", str(everything))
        with np.load(everything) as data:
            n_all = len(data["x"])
            reasons = {
                str(r): int(n)
                for r, n in zip(*np.unique(data["reason"], return_counts=True), strict=True)
            }
        self.note(f"{n_all} samples ({reasons}), {n_labelled} of them with their true label")
        return (labelled, n_all, n_labelled), everything

    def _count(self, *args: str) -> int:
        """Samples ``edgedl collector export ARGS`` writes (0 when none matches yet)."""
        done = subprocess.run([*edgedl_command(), *args], capture_output=True, timeout=120)
        if done.returncode != 0:
            return 0
        with np.load(args[-1]) as data:
            return len(data["x"])

    def _retrain(
        self, workdir: Path, samples: tuple[Path, int, int], fielded: Path
    ) -> dict[str, Any]:
        from dataclasses import asdict

        from .retrain import retrain

        self.say(
            "fine-tuning the digits CNN on the labelled samples plus its original training "
            "digits (edgedl.demo.retrain, seeded)"
        )
        report = retrain(
            workdir / "digits" / "digits.keras",
            samples[0],
            fielded,
            workdir / "digits" / "train.npz",
            workdir / "retrain",
            epochs=FINE_TUNE_EPOCHS,
            rate=SAMPLING_RATE,
        )
        self.note(
            f"held-out field samples ({report.held_out}): version 1 {report.accuracy_before:.1%}"
            f" → retrained {report.accuracy_after:.1%}"
        )
        return asdict(report)

    def _convert_v2(self, workdir: Path) -> Path:
        retrained, out = workdir / "retrain", workdir / "bundles" / "digits-v2"
        self.say(
            "converting the retrained model (version 2): its reference profile from an unbiased "
            "share of the field samples, its calibration from the held-out ones"
        )
        self._run(
            "convert", str(retrained / "digits.keras"), "--target", "tflite-int8",
            "--name", MODEL, "--version", "2",
            "--calibration", str(retrained / "calibration.npz"),
            "--validation", str(retrained / "validation.npz"),
            "--labels", str(workdir / "digits" / "labels.txt"),
            "--max-accuracy-drop", "5", "--output", str(out), "--force",
        )  # fmt: skip
        return out

    def _rollout(
        self, url: str, agent_url: str, x: NDArray[Any], rng: np.random.Generator
    ) -> dict[str, Any]:
        """``edgedl fleet rollout --strategy canary --wait`` under shifted traffic."""
        from edgedl.client import AgentClient

        args = [
            "fleet", "rollout", MODEL, "2", "--fleet", FLEET, "--strategy", "canary",
            "--waves", "100%", "--probation", str(FLEET_PROBATION_S),
            "--option", f"share={CANARY_SHARE}", "--option", f"promote_after={PROMOTE_AFTER}",
            "--wait", "--collector", url,
        ]  # fmt: skip
        self.say(f"$ edgedl {' '.join(args)}")
        proc = subprocess.Popen(
            [*edgedl_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 2 * WAIT_S
        served: list[str] = []
        try:
            with AgentClient(agent_url) as client:
                while proc.poll() is None or served[-PROMOTE_AFTER:].count("2") < PROMOTE_AFTER:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            f"the canary rollout did not finish in {2 * WAIT_S:.0f} s "
                            f"(versions answering: {sorted(set(served[-50:]))})"
                        )
                    xs = shift(x[rng.integers(0, len(x), 4)], rng)
                    served.append(str(client.predict(MODEL, xs).model_version))
                    if proc.poll() is not None and proc.returncode != 0:
                        break
        finally:
            if proc.poll() is None:
                proc.kill()
            output = proc.communicate()[0].strip()
        if proc.returncode != 0:
            raise ConfigError(f"the rollout did not complete: {output.splitlines()[-1:]}")
        for line in output.splitlines()[-2:]:
            self.note(line)
        rollout = max(_get(url, "/api/v1/rollouts"), key=lambda r: r["id"])
        self.note(
            f"rollout {rollout['id']}: {rollout['state']}; the canary answered "
            f"{served.count('2')} of {len(served)} requests sent meanwhile, "
            f"the agent now serves version 2"
        )
        return dict(rollout)

    def _drift_of_v2(self, url: str) -> dict[str, Any]:
        def judged() -> dict[str, Any] | None:
            for r in _get(url, "/api/v1/drift", device=DEVICE):
                if r.get("version") == "2" and any(s["judged"] for s in r["statistics"]):
                    return dict(r)
            return None

        result = self._wait(judged, "a drift judgement of version 2")
        psis = [s["psi"] for s in result["statistics"] if s["judged"] and s["psi"] is not None]
        drift_open = _open_alerts(url, "drift", "2")
        self.say(
            f"drift of version 2 against its own reference: PSI at most {max(psis):.3f} over "
            f"{len(psis)} statistics; drift alerts open on version 2: {len(drift_open)}"
        )
        return {"max_psi": max(psis), "statistics": len(psis), "open": len(drift_open)}

    def _wait(self, check: Callable[[], T | None], what: str, timeout: float = WAIT_S) -> T:
        """Poll ``check`` until it gives a value; a clear error after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for child in self.children:
                if child.proc.poll() is not None:
                    raise ConfigError(
                        f"the {child.name} exited with code {child.proc.returncode} while "
                        f"waiting for {what}: {child.log_tail()}"
                    )
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ConfigError(f"no {what} after {timeout:.0f} s")
            time.sleep(0.5)


def _passes(
    x: NDArray[Any], y: NDArray[Any], rng: np.random.Generator, n: int
) -> tuple[NDArray[Any], NDArray[Any]]:
    return np.concatenate([shift(x, rng) for _ in range(n)]), np.concatenate([y] * n)


def _merged(a: Asked, b: Asked) -> Asked:
    return Asked(a.ids + b.ids, a.truth + b.truth, a.correct + b.correct,
                 a.samples + b.samples, a.versions | b.versions, a.labelled + b.labelled)  # fmt: skip


def _short(arg: str) -> str:
    """A path argument as a name relative to the work folder, for printing."""
    return Path(arg).name if "/" in arg and not arg.startswith("http") else arg


def _get(url: str, path: str, **params: Any) -> Any:
    return httpx.get(f"{url}{path}", params=params, timeout=30).json()


def _alerts(url: str) -> list[dict[str, Any]]:
    return [a for a in _get(url, "/api/v1/alerts") if a["fleet"] == FLEET]


def _open_alerts(url: str, kind: str | None, version: str | None) -> list[dict[str, Any]]:
    return [
        a
        for a in _alerts(url)
        if a["state"] == "open"
        and (kind is None or a["kind"] == kind)
        and (version is None or a["version"] == version)
    ]


__all__ = ["LoopDemo", "shift"]
