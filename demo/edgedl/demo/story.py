"""The demo's story, step by step: train, convert, broker, collector, agent, stream, drift."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray
from rich.console import Console

from edgedl.errors import ConfigError

from .processes import (
    Child,
    broker_answers,
    check_port_free,
    check_writable,
    edgedl_command,
    pick_port,
    start_broker,
)

FLEET = "demo"
DEVICE = "demo-pi"
MODEL = "digits"
MIN_SAMPLES = 200
TELEMETRY_INTERVAL_S = 0.5
ALERT_TIMEOUT_S = 90.0
AGENT_TOML = """\
# Written by `edgedl demo`: short sessions, so a demo leaves nothing queued on a shared broker.
[telemetry]
spool_path = "{spool}"
keepalive_s = 5
session_expiry_s = 60
reconnect_min_s = 0.2
reconnect_max_s = 1.0
"""
COLLECTOR_TOML = """\
# Written by `edgedl demo`.
[mqtt]
session_expiry_s = 60
"""


@dataclass
class DemoOptions:
    """What the user chose on the command line."""

    workdir: Path | None = None
    http_port: int = 8090
    agent_port: int = 8080
    mqtt_url: str | None = None
    #: A running collector to use (its broker is ``mqtt_url``) instead of starting one.
    collector_url: str | None = None
    keep: bool = False
    epochs: int = 20


class _Stopped(Exception):
    """SIGTERM arrived: unwind and stop what was started."""


class Demo:
    """One run of the demo; :meth:`run` does it all and stops every process it started."""

    def __init__(self, options: DemoOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or _console()
        self.children: list[Child] = []
        self.step = 0
        self._temporary = options.workdir is None
        # A collector of its own sees one demo device; a shared one gets a new device each run,
        # so that alerts of earlier runs are not taken for this run's.
        self.device = (
            DEVICE if options.collector_url is None else f"{DEVICE}-{secrets.token_hex(3)}"
        )

    def say(self, text: str) -> None:
        """Print the next numbered step."""
        self.step += 1
        self.console.print(f"[bold cyan]{self.step:>2}.[/] {text}")

    def note(self, text: str) -> None:
        """Print a detail of the current step."""
        self.console.print(f"    {text}")

    def run(self) -> None:
        """Run the whole loop; stop everything on the way out, whatever happened."""
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        workdir: Path | None = None
        try:
            workdir = self._prepare()
            self._story(workdir)
        except _Stopped:
            self.console.print("[yellow]stopping (SIGTERM)[/]")
        finally:
            self._stop_children()
            signal.signal(signal.SIGTERM, previous)
            if workdir is not None and self._temporary:
                shutil.rmtree(workdir, ignore_errors=True)

    # -- steps -------------------------------------------------------------------------------

    def _prepare(self) -> Path:
        """Check ports and the work folder before anything slow happens."""
        if self.options.collector_url is None:
            check_port_free(self.options.http_port, "--http-port")
        elif not _subscribed(self.options.collector_url.rstrip("/")):
            raise ConfigError(
                f"no collector subscribed to its broker answers at "
                f"{self.options.collector_url} (--collector)"
            )
        check_port_free(self.options.agent_port, "--agent-port")
        if self.options.workdir is not None:
            folder = check_writable(self.options.workdir)
        else:
            try:
                folder = Path(tempfile.mkdtemp(prefix="edgedl-demo-"))
            except OSError as exc:
                raise ConfigError(
                    f"cannot create a temporary folder: {exc.strerror or exc} "
                    "(set TMPDIR or pass --workdir)"
                ) from None
        gone = " (a temporary one, removed at the end)" if self._temporary else ""
        self.say(f"work folder [bold]{folder}[/]{gone}")
        return folder

    def _story(self, workdir: Path) -> None:
        mqtt_url = self._broker(workdir)
        bundle, test = self._train_and_convert(workdir)
        collector_url = self._collector(workdir, mqtt_url)
        self._register_reference(collector_url, bundle)
        agent_url = self._agent(workdir, mqtt_url, bundle)
        x, y = test
        self._stream_clean(agent_url, collector_url, x, y)
        alert = self._stream_shifted(agent_url, collector_url, x)
        self.say(
            f"[bold red]drift alert fired[/]: {alert['metric']} = {alert['value']:.3f} "
            f"> {alert['threshold']:.3f} on {alert['device']} ({alert['message'] or ''})"
        )
        self.console.print(f"    dashboard: [bold underline]{collector_url}/[/]")
        self.console.print(f"    alerts:    {collector_url}/api/v1/alerts")
        if self.options.keep:
            self.console.print(
                "    [bold]--keep[/]: everything stays up; press Ctrl-C to stop it all"
            )
            _wait_forever()

    def _train_and_convert(self, workdir: Path) -> tuple[Path, tuple[NDArray[Any], NDArray[Any]]]:
        from edgedl.converters import ConvertOptions, convert
        from edgedl.converters.samples import train_digits

        self.say(
            f"training the digits CNN ({self.options.epochs} epochs on scikit-learn's "
            "8x8 digits, 75% of them; the other 25% are held out)"
        )
        sample = train_digits(workdir / "digits", epochs=self.options.epochs)
        self.note(f"Keras accuracy on the held-out digits: {sample.test_accuracy:.1%}")
        self.say(
            "converting it to [bold]tflite-int8[/] (full-integer LiteRT) with a reference profile"
        )
        result = convert(
            sample.model,
            ConvertOptions(
                target="tflite-int8",
                calibration=sample.train,
                validation=sample.test,
                labels=sample.labels,
                output=workdir / "bundles" / "digits-tflite-int8",
                force=True,
            ),
        )
        if result.bundle is None:
            raise ConfigError("the conversion wrote no bundle")
        manifest = result.bundle.manifest
        self.note(
            f"bundle {result.bundle.path} ({manifest.size_bytes / 1024:.0f} KiB, "
            f"sha256 {manifest.sha256[:12]}…)"
        )
        with np.load(sample.test) as data:
            test = (np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"]))
        return result.bundle.path, test

    def _broker(self, workdir: Path) -> str:
        if self.options.mqtt_url is not None:  # asked for by name: that one or none
            if not broker_answers(self.options.mqtt_url):
                raise ConfigError(f"no MQTT broker answers at {self.options.mqtt_url} (--mqtt)")
            self.say(f"using the MQTT broker at [bold]{self.options.mqtt_url}[/]")
            return self.options.mqtt_url
        url = os.environ.get("EDGEDL_MQTT_URL") or "mqtt://127.0.0.1:1883"
        if broker_answers(url):
            self.say(f"using the MQTT broker at [bold]{url}[/]")
            return url
        if self.options.collector_url is not None:
            raise ConfigError(
                f"no MQTT broker answers at {url}: name the collector's broker with --mqtt"
            )
        broker, started, what = start_broker(workdir)
        self.children.append(broker)
        self.say(f"no MQTT broker answers at {url}: started [bold]{what}[/]")
        self.note(f"broker at {started} (pid {broker.pid})")
        return started

    def _collector(self, workdir: Path, mqtt_url: str) -> str:
        if self.options.collector_url is not None:
            return self._existing_collector(self.options.collector_url.rstrip("/"))
        return self._start_collector(workdir, mqtt_url, COLLECTOR_TOML, MIN_SAMPLES, "")

    def _start_collector(
        self, workdir: Path, mqtt_url: str, config_text: str, min_samples: int, what: str
    ) -> str:
        """Start a collector of the demo's own on SQLite; ``what`` ends its "up" line."""
        port = pick_port(self.options.http_port)
        db = workdir / "collector.db"
        config = workdir / "collector.toml"
        config.write_text(config_text, encoding="utf-8")
        collector = Child(
            "collector",
            [
                *edgedl_command(), "collector", "run", "--config", str(config),
                "--mqtt", mqtt_url, "--db", f"sqlite:///{db}",
                "--http-port", str(port), "--no-shared", "--fleet", FLEET,
                "--client-id", f"edgedl-demo-collector-{port}",
                "--min-samples", str(min_samples),
            ],
            workdir / "collector.log",
        )  # fmt: skip
        self.children.append(collector)
        url = f"http://127.0.0.1:{port}"
        collector.wait_until(lambda: _subscribed(url), timeout=60)
        self.say(
            f"collector up (pid {collector.pid}): SQLite {db}, dashboard and API on [bold]{url}[/]"
            + what
        )
        return url

    def _existing_collector(self, url: str) -> str:
        self.say(f"using the collector at [bold]{url}[/] (not started by the demo)")
        return url

    def _register_reference(self, collector_url: str, bundle: Path) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        response = httpx.post(
            f"{collector_url}/api/v1/references", content=json.dumps(manifest), timeout=30
        )
        if response.status_code != 201:
            raise ConfigError(f"the collector refused the reference profile: {response.text}")
        ref = response.json()
        self.say(
            f"registered the bundle's reference profile ({ref['statistics']} statistics) "
            "with the collector: POST /api/v1/references"
        )

    def _agent(self, workdir: Path, mqtt_url: str, bundle: Path) -> str:
        port = pick_port(self.options.agent_port)
        config = workdir / "agent.toml"
        config.write_text(AGENT_TOML.format(spool=workdir / "agent-spool.db"), encoding="utf-8")
        agent = Child(
            "agent",
            [
                *edgedl_command(), "agent", "serve", "--config", str(config),
                "--model", str(bundle), "--port", str(port), "--mqtt", mqtt_url,
                "--fleet", FLEET, "--device", self.device,
                "--telemetry-interval", str(TELEMETRY_INTERVAL_S),
            ],
            workdir / "agent.log",
        )  # fmt: skip
        self.children.append(agent)
        url = f"http://127.0.0.1:{port}"
        agent.wait_until(lambda: _answers(f"{url}/v2/health/ready"), timeout=60)
        self.say(
            f"agent up (pid {agent.pid}) on [bold]{url}[/]: fleet {FLEET}, device {self.device}, "
            f"a telemetry window every {TELEMETRY_INTERVAL_S} s"
        )
        return url

    def _stream_clean(
        self, agent_url: str, collector_url: str, x: NDArray[Any], y: NDArray[Any]
    ) -> None:
        from edgedl.client import AgentClient

        self.say(f"streaming the {len(x)} held-out digits through the agent (edgedl.client)")
        predictions = []
        with AgentClient(agent_url) as client:
            for i in range(0, len(x), 8):
                outputs = client.infer(MODEL, x[i : i + 8])
                predictions.append(np.argmax(next(iter(outputs.values())), axis=-1))
        accuracy = float(np.mean(np.concatenate(predictions) == y))
        self.note(f"agent accuracy: {accuracy:.1%} (int8 on LiteRT)")
        result = _wait_for(lambda: _judged(collector_url, self.device), 30)
        if result is None:
            self.note("the collector has not judged drift yet")
            return
        psis = [s["psi"] for s in result["statistics"] if s["judged"]]
        self.note(
            f"collector: {result['samples']} samples judged against the reference, PSI at most "
            f"{max(psis):.3f} over {len(psis)} statistics (alert above 0.2), "
            f"drift alerts: {len(_drift_alerts(collector_url, self.device))} "
            "(the reference was profiled on these same digits)"
        )

    def _stream_shifted(
        self, agent_url: str, collector_url: str, x: NDArray[Any]
    ) -> dict[str, Any]:
        from edgedl.client import AgentClient

        self.say(
            "streaming them again through a dirty lens in a brighter room "
            "(contrast x0.5, brightness +0.4, noise σ 0.08) until the collector raises an alert"
        )
        rng = np.random.default_rng(0)
        deadline = time.monotonic() + ALERT_TIMEOUT_S
        sent = 0
        next_poll = 0.0
        with AgentClient(agent_url) as client:
            while time.monotonic() < deadline:
                shifted = np.clip(0.5 * x + 0.4 + rng.normal(0, 0.08, x.shape), 0, 1)
                for i in range(0, len(x), 8):
                    client.infer(MODEL, shifted[i : i + 8].astype(np.float32))
                    sent += len(shifted[i : i + 8])
                    if time.monotonic() >= next_poll:
                        next_poll = time.monotonic() + 1.0
                        alerts = _drift_alerts(collector_url, self.device)
                        if alerts:
                            self.note(f"{sent} shifted digits sent")
                            return alerts[0]
        raise ConfigError(f"no drift alert after {ALERT_TIMEOUT_S:.0f} s of shifted digits")

    def _stop_children(self) -> None:
        if not self.children:
            return
        self.say("stopping what the demo started")
        for child in reversed(self.children):
            code = child.stop()
            self.note(f"{child.name} (pid {child.pid}) stopped, exit code {code}")
        self.children.clear()


def _console() -> Console:
    """A console that does not wrap at 80 columns when the output is a pipe or a file."""
    terminal = Console().is_terminal
    return Console(highlight=False, width=None if terminal else 120)


def _raise_stopped(_signum: int, _frame: FrameType | None) -> None:
    raise _Stopped


def _wait_forever() -> None:
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        return


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _subscribed(collector_url: str) -> bool:
    try:
        health = httpx.get(f"{collector_url}/healthz", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return False
    return bool(health.get("mqtt_subscribed"))


def _judged(collector_url: str, device: str) -> dict[str, Any] | None:
    results = httpx.get(
        f"{collector_url}/api/v1/drift", params={"device": device}, timeout=10
    ).json()
    for result in results:
        if any(s["judged"] for s in result.get("statistics", [])):
            return dict(result)
    return None


def _drift_alerts(collector_url: str, device: str) -> list[dict[str, Any]]:
    alerts = httpx.get(f"{collector_url}/api/v1/alerts", timeout=10).json()
    return [a for a in alerts if a["kind"] == "drift" and a["device"] == device]


def _wait_for(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    return None


__all__ = ["Demo", "DemoOptions"]
