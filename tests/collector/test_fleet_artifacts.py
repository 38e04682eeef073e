"""The collector's artifact store and rollout API, with a real collector and the real CLI.

Bundles are small hand-built ONNX models (no TensorFlow), signed with real Ed25519 keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.agent.conftest import make_onnx_bundle
from tests.collector.helpers import Broker, collector_config
from tests.conftest import run_edgedl

from edgedl.collector.fleet.planning import parse_waves, select_devices, wave_sizes
from edgedl.collector.service import Collector
from edgedl.errors import FleetError
from edgedl.signing import generate_keys, sign_bundle


def triple(out: Path, version: str) -> Path:
    """A real bundle ``y = 3 x`` named ``triple`` at ``version``."""
    from onnx import TensorProto, helper

    from edgedl.bundle import MANIFEST_FILE

    three = helper.make_tensor("three", TensorProto.FLOAT, [1], [3.0])
    nodes = [helper.make_node("Mul", ["x", "three"], ["y"])]
    out.mkdir(parents=True, exist_ok=True)
    path = make_onnx_bundle(out, "triple", nodes, [three], "n")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    manifest["version"] = version
    (path / MANIFEST_FILE).write_text(json.dumps(manifest))
    return path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, Path]:
    private, public = generate_keys("release", tmp_path)
    other, _ = generate_keys("other", tmp_path)
    return private, public, other


@pytest.fixture
def collector(broker: Broker, tmp_path: Path, keys: tuple[Path, Path, Path]) -> Iterator[Collector]:
    config = collector_config(
        broker,
        f"sqlite:///{tmp_path / 'c.db'}",
        fleet="artifacts-test",
        **{
            "fleet.artifacts_path": str(tmp_path / "artifacts"),
            "fleet.trusted_keys": [str(keys[1])],
        },
    )
    c = Collector(config).start()
    yield c
    c.stop()


def test_publish_checks_signatures_and_serves_ranges(
    collector: Collector,
    tmp_path: Path,
    keys: tuple[Path, Path, Path],
) -> None:
    private, _, other = keys
    good = triple(tmp_path / "good", "1")
    sign_bundle(good, private)
    result = run_edgedl("fleet", "publish", good, "--collector", collector.url, "--json")
    assert result.code == 0, result.stderr
    published = json.loads(result.stdout)
    assert published["created"] and published["signed_by"]
    # the same bundle again is no new version
    again = run_edgedl("fleet", "publish", good, "--collector", collector.url)
    assert again.code == 0 and "already published" in again.stdout

    # other bytes under a published version are refused: a version never changes
    other_bytes = triple(tmp_path / "other", "1")
    (other_bytes / "report.json").write_text('{"note": "rebuilt"}')
    sign_bundle(other_bytes, private)
    refused = run_edgedl("fleet", "publish", other_bytes, "--collector", collector.url)
    assert refused.code == 1 and "already published with another sha256" in refused.stderr

    unsigned = triple(tmp_path / "unsigned", "2")
    refused = run_edgedl("fleet", "publish", unsigned, "--collector", collector.url)
    assert refused.code == 1 and "is not signed" in refused.last_error_line
    stranger = triple(tmp_path / "stranger", "3")
    sign_bundle(stranger, other)
    refused = run_edgedl("fleet", "publish", stranger, "--collector", collector.url)
    assert refused.code == 1 and "not a trusted key" in refused.last_error_line

    url = published["url"]
    whole = httpx.get(url).content
    assert hashlib.sha256(whole).hexdigest() == published["sha256"]
    assert len(whole) == published["size_bytes"]
    half = len(whole) // 2
    part = httpx.get(url, headers={"Range": f"bytes={half}-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes {half}-{len(whole) - 1}/{len(whole)}"
    assert part.content == whole[half:]
    beyond = httpx.get(url, headers={"Range": f"bytes={len(whole) + 10}-"})
    assert beyond.status_code == 416
    assert httpx.get(f"{collector.url}/artifacts/triple/9.tar").status_code == 404

    listing = run_edgedl("fleet", "ls", "--collector", collector.url)
    assert listing.code == 0 and "triple: published 1" in listing.stdout


def test_rollout_requests_are_checked(collector: Collector) -> None:
    missing = run_edgedl("fleet", "rollout", "triple", "7", "--collector", collector.url)
    assert missing.code == 1 and "is not published" in missing.last_error_line
    body = {"model": "triple", "version": "1", "waves": "1,ten%"}
    answer = httpx.post(f"{collector.url}/api/v1/rollouts", json=body)
    assert answer.status_code == 422 and "is not published" in answer.json()["error"]
    answer = httpx.post(f"{collector.url}/api/v1/rollouts", json={"model": "triple"})
    assert answer.status_code == 422 and "version" in answer.json()["error"]
    unreachable = run_edgedl("fleet", "status", "--collector", "http://127.0.0.1:9")
    assert unreachable.code == 1
    assert "cannot reach the collector" in unreachable.last_error_line


def test_waves_and_selectors() -> None:
    assert wave_sizes(parse_waves("1,10%,100%"), 5) == [1, 5]
    assert wave_sizes(parse_waves("1,40%,100%"), 5) == [1, 2, 5]
    assert wave_sizes(parse_waves("2"), 5) == [2, 5]
    with pytest.raises(FleetError, match="invalid wave"):
        parse_waves("1,ten%")
    known = ["pi-1", "pi-2", "cam-1"]
    assert select_devices(known, None) == ["cam-1", "pi-1", "pi-2"]
    assert select_devices(known, "pi-*") == ["pi-1", "pi-2"]
    assert select_devices(known, "cam-1,pi-2") == ["cam-1", "pi-2"]
    with pytest.raises(FleetError, match="unknown device 'pi-9'"):
        select_devices(known, "pi-9")
