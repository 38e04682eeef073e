"""The fleet updater: follow the desired state the collector retains for this device.

:class:`FleetUpdater` is a component of the agent (``start()``/``stop()``). Its MQTT client
subscribes to ``edgedl/v1/{fleet}/{device}/desired`` at QoS 1 with a persistent session, so
a device that was off when a rollout reached it finds the retained desired state when it
comes back. Its one worker thread applies the newest desired state:

* the version is already served: nothing to do (or a rollout of another version is stopped);
* the version is the store's previous one: roll back to it;
* otherwise check the free disk, download the bundle ``.tar`` with resume
  (:mod:`.download`), check its sha256, and deploy it through the agent's
  :class:`~edgedl.agent.rollout.rollouts.Rollouts` with the desired strategy: the bundle's
  signature is checked there (``[security]``), and whatever is refused leaves the live
  version serving.

What it is doing goes into the retained ``/status`` as its ``rollout`` field: the rollout id,
model, version, ``state`` (downloading, deploying, probation, promoted, rolled_back, refused)
and the reason, the versions served, and for a shadow deployment its agreement with the live
model.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from edgedl.errors import EdgeDLError, FleetError, TelemetryError
from edgedl.telemetry import DesiredState, decode_desired, desired_topic

from ..rollout.config import DeployOptions
from .config import FleetUpdatesConfig
from .download import download

if TYPE_CHECKING:
    from ..rollout.rollouts import Rollouts
    from ..telemetry.config import TelemetryConfig
    from ..telemetry.publisher import Publisher

log = logging.getLogger("edgedl.agent.fleet")
MB = 1024 * 1024


class FleetUpdater:
    """Applies the fleet's desired state on this agent (see the module docstring)."""

    def __init__(
        self,
        config: FleetUpdatesConfig,
        telemetry: TelemetryConfig,
        rollouts: Rollouts,
        publisher: Publisher | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.rollouts = rollouts
        self.publisher = publisher
        self.topic = desired_topic(telemetry.fleet, telemetry.device)
        root = Path(config.downloads_path or Path(rollouts.store.root) / ".downloads")
        self.downloads = root
        self._lock = threading.Lock()
        self._pending: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._desired: DesiredState | None = None
        self._state: dict[str, Any] | None = None
        self._published_shadow: Any = None
        self._last_status = 0.0
        if publisher is not None:
            publisher.rollout = self.report

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Connect (in the background), subscribe, and start the worker."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="edgedl-fleet", daemon=True)
        self._thread.start()
        self._client = self._connect()

    def stop(self) -> None:
        """Disconnect and stop the worker (a download in progress stops; its part is kept)."""
        self._stop.set()
        self._wake.set()
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=30)

    def report(self) -> dict[str, Any] | None:
        """The ``rollout`` field of this device's status (None before any desired state)."""
        with self._lock:
            if self._state is None:
                return None
            state = dict(self._state)
        state["serving"] = {
            name: served.version
            for name in self.rollouts.repository.names()
            if (served := self.rollouts.live(name)) is not None
        }
        return state

    # ---------------------------------------------------------------- MQTT

    def _connect(self) -> Any:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        cfg = self.telemetry
        broker = cfg.broker()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{cfg.effective_client_id}-desired",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if broker.tls:
            import ssl

            client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file) if cfg.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        client.reconnect_delay_set(
            int(max(1, cfg.reconnect_min_s)), int(max(1, cfg.reconnect_max_s))
        )

        def on_connect(c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            if reason.is_failure:
                log.warning("fleet updates: the broker refused the connection: %s", reason)
                return
            # Subscribing again (even on a resumed session) brings the retained desired state.
            c.subscribe(self.topic, qos=1)

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            with self._lock:
                self._pending = bytes(msg.payload)
            self._wake.set()

        client.on_connect = on_connect
        client.on_message = on_message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = cfg.session_expiry_s
        client.connect_async(
            broker.host,
            broker.port,
            keepalive=cfg.keepalive_s,
            clean_start=False,
            properties=props,
        )
        client.loop_start()
        log.info("fleet updates: following %s", self.topic)
        return client

    # ---------------------------------------------------------------- the worker

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(0.5, self.config.status_interval_s))
            self._wake.clear()
            with self._lock:
                payload, self._pending = self._pending, None
            try:
                if payload is not None:
                    self._receive(payload)
                self._watch()
            except Exception:  # the updater lives on; the live version keeps serving
                log.exception("fleet updates: applying the desired state failed")

    def _receive(self, payload: bytes) -> None:
        if not payload:
            return  # the collector cleared the desired state: keep what runs
        try:
            desired = decode_desired(payload)
        except TelemetryError as exc:
            log.warning("fleet updates: ignoring a desired state that is not valid: %s", exc)
            return
        self._desired = desired
        self.apply(desired)

    def apply(self, d: DesiredState) -> None:
        """Bring this agent to the desired state ``d`` (see the module docstring)."""
        name, version = d.model, d.version
        rollouts = self.rollouts
        running = rollouts.rollout(name)
        if running is not None:
            if running.candidate.version == version:
                if d.promote and running.strategy == "shadow":
                    rollouts.promote(name)
                    self._set(d, "promoted", "promoted by the fleet")
                return
            rollouts.rollback(name)  # another version is wanted: drop this candidate
            if rollouts.live(name) is not None and rollouts.live(name).version == version:  # type: ignore[union-attr]
                self._set(d, "rolled_back", d.reason or "rolled back by the fleet")
                return
        live = rollouts.live(name)
        if live is not None and live.version == version:
            # Keep a refusal (the device stays on this version because it refused another)
            # and a promotion of this very version: "already serving" would hide why.
            known = self._state or {}
            kept = known.get("state") == "refused" or (
                known.get("state") == "promoted" and known.get("version") == version
            )
            if not kept:
                self._set(d, "promoted", "already serving")
            return
        store = rollouts.store
        if store.has(name, version) and store.previous(name) == version and live is not None:
            try:
                rollouts.rollback(name)
            except EdgeDLError as exc:
                self._set(d, "refused", f"cannot roll back to {version}: {exc}")
                return
            self._set(d, "rolled_back", d.reason or "rolled back by the fleet")
            return
        try:
            options = DeployOptions.model_validate({**d.options, "strategy": d.strategy})
        except ValidationError as exc:
            self._set(d, "refused", f"bad deploy options: {exc.errors()[0]['msg']}")
            return
        if store.has(name, version):
            self._deploy(d, store.get(name, version).path, options)
            return
        if d.url is None:
            self._set(d, "refused", f"{name} {version} is not in the store and has no URL")
            return
        problem = self._disk_problem(d)
        if problem is not None:
            self._set(d, "refused", problem)
            return
        self._set(d, "downloading", f"from {d.url}")
        tar = self.downloads / f"{name}-{version}-{(d.sha256 or 'nosha')[:16]}.tar"
        try:
            download(
                d.url,
                tar,
                d.sha256,
                d.size_bytes,
                timeout_s=self.config.download_timeout_s,
                attempts=self.config.download_attempts,
                retry_min_s=self.config.retry_min_s,
                retry_max_s=self.config.retry_max_s,
                stop=self._stop,
            )
        except FleetError as exc:
            if not self._stop.is_set():
                self._set(d, "refused", str(exc))
            return
        try:
            self._deploy(d, tar, options)
        finally:
            tar.unlink(missing_ok=True)

    def _deploy(self, d: DesiredState, path: Path, options: DeployOptions) -> None:
        self._set(d, "deploying", f"{options.strategy}")
        try:
            result = self.rollouts.deploy(path, options)
        except EdgeDLError as exc:
            log.warning("fleet updates: %s %s refused: %s", d.model, d.version, exc)
            self._set(d, "refused", str(exc))
            return
        if result.get("rollout") is not None:
            self._set(d, "probation", f"{options.strategy} rollout on the device")
        else:
            self._set(d, "promoted", "first version of the model")

    def _watch(self) -> None:
        """Follow the device's own rollout: promoted or rolled back, shadow figures."""
        d = self._desired
        state = self._state
        if d is None or state is None or state.get("state") != "probation":
            return
        running = self.rollouts.rollout(d.model)
        if running is not None and running.candidate.version == d.version:
            if running.strategy == "shadow":
                figures = running.to_dict().get("shadow") or {}
                shadow = {
                    "compared": figures.get("compared_samples", 0),
                    "agreement": figures.get("top1_agreement"),
                }
                now = time.monotonic()
                if shadow != self._published_shadow and (
                    now - self._last_status >= self.config.status_interval_s
                ):
                    self._published_shadow = shadow
                    with self._lock:
                        if self._state is not None:
                            self._state["shadow"] = shadow
                    self._publish_status()
            return
        live = self.rollouts.live(d.model)
        if live is not None and live.version == d.version:
            self._set(d, "promoted", "the device's probation passed")
            return
        history = self.rollouts.store.read_state(d.model).get("history", [])
        last = history[-1] if history else {}
        self._set(d, "rolled_back", str(last.get("reason") or "rolled back on the device"))

    def _disk_problem(self, d: DesiredState) -> str | None:
        size = d.size_bytes or 0
        self.downloads.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.downloads).free
        # the .tar, the unpacked bundle and its copy in the store, plus the margin
        need = 3 * size + self.config.min_free_mb * MB
        if free < need:
            return (
                f"not enough disk for {d.model} {d.version}: {free / MB:.0f} MB free, "
                f"{need / MB:.0f} MB needed ({size / MB:.1f} MB bundle, "
                f"{self.config.min_free_mb:g} MB kept free)"
            )
        return None

    def _set(self, d: DesiredState, state: str, reason: str) -> None:
        with self._lock:
            self._state = {
                "rollout_id": d.rollout_id,
                "model": d.model,
                "version": d.version,
                "strategy": d.strategy,
                "state": state,
                "reason": reason[:500],
                "at": time.time(),
            }
        log.info("fleet updates: %s %s %s (%s)", d.model, d.version, state, reason)
        self._publish_status()

    def _publish_status(self) -> None:
        self._last_status = time.monotonic()
        if self.publisher is not None:
            self.publisher.publish_status()


def attach(runtime: Any, telemetry: Any) -> FleetUpdater | None:
    """Follow the fleet's desired state when ``[fleet] updates`` is on; else None.

    ``runtime`` is the :class:`~edgedl.agent.service.AgentRuntime` (its ``rollouts`` deploy
    the versions), ``telemetry`` its :class:`~edgedl.agent.telemetry.service.TelemetryService`
    (its broker settings, and the status the updater reports in). Raise
    :class:`~edgedl.errors.ConfigError` when updates are on without what they need.
    """
    from edgedl.errors import ConfigError

    config: FleetUpdatesConfig = runtime.config.fleet
    if not config.updates:
        return None
    if telemetry is None:
        raise ConfigError("fleet.updates needs telemetry: set telemetry.mqtt (or --mqtt)")
    if runtime.rollouts is None:
        raise ConfigError(
            f"fleet.updates needs a writable store: store.path = {runtime.config.store.path!r}"
        )
    updater = FleetUpdater(config, runtime.config.telemetry, runtime.rollouts, telemetry.publisher)
    runtime.add_component(updater)
    return updater
