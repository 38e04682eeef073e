"""Fleet rollouts end to end: Mosquitto, a collector and five agents, each its own process.

* a healthy version goes out in three waves and reaches all five devices; the one that was
  off during the rollout catches up when it comes back; the first download of the bundle is
  cut half-way and resumes from there (a Range request), not from the start;
* a version that disagrees with the live model in shadow (and is far slower) is halted
  after the first wave, and the device it touched is back on the previous version;
* a tampered bundle, an unsigned one and one signed by an unknown key are refused by the
  device, which keeps serving; a device short of disk refuses and says why.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tests.agent.conftest import AgentProcess
from tests.agent.rollout_fixtures import slow_digits  # noqa: F401 - a fixture
from tests.conftest import run_edgedl
from tests.e2e.conftest import CollectorProcess
from tests.e2e.fleet_harness import (
    FLEET,
    CuttingProxy,
    Keys,
    Traffic,
    collector_toml,
    make_keys,
    served_version,
    signed_versions,
    start_device,
    wait_until,
)
from tests.mqtt_broker import MosquittoBroker

from edgedl.bundle import MANIFEST_FILE, sha256_file
from edgedl.signing import sign_bundle
from edgedl.telemetry import desired_topic

pytestmark = pytest.mark.slow

DEVICES = [f"pi-{i}" for i in range(5)]


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@pytest.fixture
def versions(digits_bundle: Callable[..., Path], tmp_path: Path, keys: Keys) -> dict[str, Path]:
    """Digits 1 and 2 (tflite-int8), signed with the release key."""
    return signed_versions(digits_bundle("tflite-int8"), tmp_path / "v", keys.private, ["1", "2"])


def device_view(collector: CollectorProcess) -> dict[str, Any]:
    """``{device: {"version", "online", "rollout"}}`` of digits, as the collector sees it."""
    models = collector.get("/api/v1/fleet/models")
    return models.get("digits", {}).get("devices", {})


def rollout(collector: CollectorProcess, rid: int) -> dict[str, Any]:
    return collector.get(f"/api/v1/rollouts/{rid}")


def publish_raw(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    """Publish one retained message as some other client would."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def finished(collector: CollectorProcess, rid: int, timeout: float) -> dict[str, Any]:
    """The rollout once it is no longer running."""
    return wait_until(
        lambda: (r := rollout(collector, rid))["state"] != "running" and r,
        timeout,
        f"rollout {rid} to finish",
    )


def publish(collector: CollectorProcess, bundle: Path) -> str:
    result = run_edgedl("fleet", "publish", bundle, "--collector", collector.url)
    assert result.code == 0, result.stderr
    return result.stdout


def start_rollout(collector: CollectorProcess, *args: str) -> int:
    result = run_edgedl("fleet", "rollout", *args, "--collector", collector.url, "--json")
    assert result.code == 0, result.stderr
    return int(json.loads(result.stdout)["id"])


def test_healthy_rollout_reaches_every_device_in_three_waves(
    tmp_path: Path,
    e2e_broker: MosquittoBroker,
    collector_process: Callable[..., CollectorProcess],
    agent_process: Callable[..., AgentProcess],
    versions: dict[str, Path],
    keys: Keys,
) -> None:
    proxy = CuttingProxy()
    config = collector_toml(
        tmp_path / "c", probation_s=2, public_url=proxy.url, trusted=keys.public
    )
    collector = collector_process("--config", config)
    proxy.target = collector.url
    agents = {
        d: start_device(agent_process, tmp_path / d, d, versions["1"], e2e_broker, keys.public)
        for d in DEVICES
    }
    wait_until(lambda: len(device_view(collector)) == 5, 60, "five devices on the collector")
    # pi-4 is off while the rollout runs (its retained status says offline)
    assert agents["pi-4"].terminate() == 0
    wait_until(lambda: not device_view(collector)["pi-4"]["online"], 30, "pi-4 offline")
    out = publish(collector, versions["2"])
    assert "published: digits 2" in out and "signed by" in out

    with Traffic(agents):
        rid = start_rollout(
            collector, "digits", "2", "--waves", "1,40%,100%",
            "--option", "probation_s=1", "--option", "probation_requests=10",
        )  # fmt: skip
        done = finished(collector, rid, 240)
        assert done["state"] == "completed", done["reason"]
        assert done["wave_sizes"] == [1, 2, 5] and done["wave"] == 3
        for device in DEVICES[:4]:
            assert served_version(agents[device]) == "2", device
        assert device_view(collector)["pi-4"]["version"] == "1"

        # pi-4 comes back: the retained desired state brings it to version 2
        agents["pi-4"] = start_device(
            agent_process, tmp_path / "pi-4", "pi-4", versions["1"], e2e_broker, keys.public
        )
        wait_until(lambda: served_version(agents["pi-4"]) == "2", 60, "pi-4 to catch up")
    # every device says on its retained status that it runs version 2, promoted
    wait_until(
        lambda: all(
            v["version"] == "2" and v["rollout"]["state"] == "promoted"
            for v in device_view(collector).values()
        ),
        30,
        "every status to say version 2, promoted",
    )

    # the first download was cut half-way; it went on from there with a Range request
    tar = [r for r in proxy.requests if r.path == "/artifacts/digits/2.tar"]
    assert tar[0].cut and tar[0].range is None
    assert tar[1].range == f"bytes={tar[0].sent}-"
    size = json.loads(run_edgedl("fleet", "ls", "--collector", collector.url, "--json").stdout)[
        "digits"
    ]["versions"][0]["size_bytes"]
    assert tar[0].sent + tar[1].sent == size
    status = run_edgedl("fleet", "status", "--collector", collector.url)
    assert f"rollout {rid}: digits 2 (bluegreen, {FLEET}) completed, wave 3/3" in status.stdout
    proxy.close()


def test_disagreeing_version_is_halted_after_the_first_wave(
    tmp_path: Path,
    e2e_broker: MosquittoBroker,
    collector_process: Callable[..., CollectorProcess],
    agent_process: Callable[..., AgentProcess],
    versions: dict[str, Path],
    keys: Keys,
    slow_digits: Path,  # noqa: F811 - the fixture
) -> None:
    bad = tmp_path / "slow"
    shutil.copytree(slow_digits, bad)
    sign_bundle(bad, keys.private)
    collector = collector_process("--config", collector_toml(tmp_path / "c", probation_s=6))
    agents = {
        d: start_device(agent_process, tmp_path / d, d, versions["1"], e2e_broker, keys.public)
        for d in DEVICES
    }
    wait_until(lambda: len(device_view(collector)) == 5, 60, "five devices on the collector")
    publish(collector, bad)
    with Traffic(agents):
        rid = start_rollout(
            collector, "digits", "slow", "--strategy", "shadow",
            "--waves", "1,40%,100%", "--min-agreement", "0.9",
        )  # fmt: skip
        halted = finished(collector, rid, 180)
        assert halted["state"] == "halted"
        assert halted["wave"] == 1 and halted["touched"] == ["pi-0"]
        reason = halted["reason"]
        assert "shadow agreement" in reason or "p95 latency" in reason, reason
        wait_until(
            lambda: device_view(collector)["pi-0"]["rollout"]["state"] == "rolled_back",
            60,
            "pi-0 back on version 1",
        )
    for device in DEVICES:
        assert served_version(agents[device]) == "1", device
    alerts = collector.get("/api/v1/alerts")
    assert any(a["kind"] == "rollout" and a["version"] == "slow" for a in alerts), alerts
    status = run_edgedl("fleet", "status", "--collector", collector.url)
    assert "halted" in status.stdout and "pi-0" in status.stdout
    assert_dashboard_shows(collector.url, "halted", reason[:40])


def assert_dashboard_shows(url: str, state: str, reason: str) -> None:
    """The dashboard's rollouts panel, in headless Chromium, shows the rollout and why."""
    from tests.collector.test_dashboard import ARGS, CHROMIUM

    if not Path(CHROMIUM).exists():
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("body[data-loaded='true']", timeout=30_000)
            row = page.locator("#rollouts tbody tr").first
            assert state in row.inner_text()
            assert reason in row.locator(".rollout-reason").inner_text()
            assert "pi-0" in row.inner_text()
        finally:
            browser.close()


def test_bad_bundles_are_refused_and_the_device_keeps_serving(
    tmp_path: Path,
    e2e_broker: MosquittoBroker,
    collector_process: Callable[..., CollectorProcess],
    agent_process: Callable[..., AgentProcess],
    versions: dict[str, Path],
    keys: Keys,
) -> None:
    # a collector that takes any bundle (no trusted keys): the devices are the last line
    collector = collector_process("--config", collector_toml(tmp_path / "c", probation_s=1))
    agents = {
        "pi-0": start_device(agent_process, tmp_path / "a0", "pi-0", versions["1"], e2e_broker, keys.public),
        "pi-1": start_device(
            agent_process, tmp_path / "a1", "pi-1", versions["1"], e2e_broker, keys.public,
            min_free_mb=1e9,
        ),
    }  # fmt: skip
    wait_until(lambda: len(device_view(collector)) == 2, 60, "two devices on the collector")
    # a hostile desired state is ignored: the device keeps serving
    publish_raw(e2e_broker, desired_topic(FLEET, "pi-0"), b'{"model": "digits", "version": ')
    wait_until(lambda: "ignoring a desired state" in agents["pi-0"].output, 30, "the refusal")
    assert served_version(agents["pi-0"]) == "1"
    out = tmp_path / "bad"
    bad = signed_versions(versions["1"], out, keys.private, ["tampered", "unsigned", "stranger"])
    manifest = json.loads((bad["tampered"] / MANIFEST_FILE).read_text())
    model = bad["tampered"] / manifest["model_file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a changed model, with a manifest rewritten to match it
    model.write_bytes(bytes(data))
    manifest["sha256"] = sha256_file(model)
    (bad["tampered"] / MANIFEST_FILE).write_text(json.dumps(manifest))
    (bad["unsigned"] / "signature.json").unlink()
    sign_bundle(bad["stranger"], keys.other_private)
    expected = {
        "tampered": "signature does not match",
        "unsigned": "is not signed",
        "stranger": "not a trusted key",
    }
    for version, why in expected.items():
        publish(collector, bad[version])
        rid = start_rollout(collector, "digits", version, "--devices", "pi-0", "--waves", "1")
        halted = finished(collector, rid, 60)
        assert halted["state"] == "halted" and why in halted["reason"], halted["reason"]
        assert "refused" in halted["reason"]
        assert served_version(agents["pi-0"]) == "1"
    # a device short of disk refuses before downloading, and says why
    publish(collector, versions["2"])
    rid = start_rollout(collector, "digits", "2", "--devices", "pi-1", "--waves", "1")
    halted = finished(collector, rid, 60)
    assert "not enough disk" in halted["reason"], halted["reason"]
    assert device_view(collector)["pi-1"]["rollout"]["state"] == "refused"
    assert served_version(agents["pi-1"]) == "1"


def test_a_shadow_rollout_that_agrees_is_promoted_wave_by_wave(
    tmp_path: Path,
    e2e_broker: MosquittoBroker,
    collector_process: Callable[..., CollectorProcess],
    agent_process: Callable[..., AgentProcess],
    versions: dict[str, Path],
    keys: Keys,
) -> None:
    collector = collector_process("--config", collector_toml(tmp_path / "c", probation_s=2))
    agents = {
        d: start_device(agent_process, tmp_path / d, d, versions["1"], e2e_broker, keys.public)
        for d in DEVICES[:2]
    }
    wait_until(lambda: len(device_view(collector)) == 2, 60, "two devices on the collector")
    publish(collector, versions["2"])
    with Traffic(agents):
        rid = start_rollout(collector, "digits", "2", "--strategy", "shadow", "--waves", "1,100%")
        done = finished(collector, rid, 120)
    assert done["state"] == "completed", done["reason"]
    # the same model in shadow agrees on every sample; each wave was promoted by the fleet
    assert all(r["shadow_agreement"] == 1.0 for r in done["wave_reports"].values())
    for device in DEVICES[:2]:
        assert served_version(agents[device]) == "2"
        assert device_view(collector)[device]["rollout"]["reason"] == "promoted by the fleet"
