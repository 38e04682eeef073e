"""The model store: versions verified on arrival and on load, an atomic active pointer, pruning."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from tests.agent.rollout_fixtures import as_version, tamper

from edgedl.agent.rollout.store import ModelStore
from edgedl.bundle import MANIFEST_FILE, Bundle, pack_bundle, sha256_file
from edgedl.errors import BundleError


@pytest.fixture
def bundle(digits_bundle) -> Path:  # type: ignore[no-untyped-def]
    return Path(digits_bundle("tflite-int8", version="1"))


def test_add_copies_a_verified_bundle_into_model_and_version(bundle: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    stored = store.add(bundle)
    assert stored.path == tmp_path / "store" / "digits" / "1"
    assert stored.sha256 == Bundle.open(bundle).manifest.sha256
    assert Bundle.open(stored.path).manifest.version == "1"  # a complete, verifiable copy
    assert [v.version for v in store.versions("digits")] == ["1"]
    assert store.models() == ["digits"]
    assert store.current("digits") is None  # arriving is not activating


def test_a_tar_bundle_is_accepted(bundle: Path, tmp_path: Path) -> None:
    tar = pack_bundle(as_version(bundle, tmp_path, "7"), tmp_path / "digits-7.tar")
    store = ModelStore(tmp_path / "store")
    assert store.add(tar).version == "7"
    assert Bundle.open(store.get("digits", "7").path).manifest.version == "7"


def test_a_tampered_bundle_is_refused_on_arrival_and_leaves_nothing(
    bundle: Path, tmp_path: Path
) -> None:
    bad = as_version(bundle, tmp_path, "2")
    tamper(bad / "model.tflite")
    store = ModelStore(tmp_path / "store")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        store.add(bad)
    assert store.versions("digits") == []
    assert not (tmp_path / "store" / "digits").exists()


def test_a_version_rotting_in_the_store_is_refused_on_load(bundle: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add(bundle)
    tamper(tmp_path / "store" / "digits" / "1" / "model.tflite")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        store.open("digits", "1")


def test_the_same_version_twice_is_idempotent_but_never_silently_replaced(
    bundle: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    first = store.add(bundle)
    assert store.add(bundle) == first
    other = as_version(bundle, tmp_path, "1")
    model = other / "model.tflite"
    model.write_bytes(model.read_bytes() + b"\0")  # another model file under the same version
    manifest = json.loads((other / MANIFEST_FILE).read_text())
    manifest.update(sha256=sha256_file(model), size_bytes=model.stat().st_size)
    (other / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="already in the store with another sha256"):
        store.add(other)
    assert store.open("digits", "1").manifest.sha256 == first.sha256


def test_activate_keeps_the_previous_version_and_rollback_swaps_them(
    bundle: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    for v in ("1", "2"):
        store.add(as_version(bundle, tmp_path, v))
    store.activate("digits", "1")
    store.activate("digits", "2")
    assert (store.current("digits"), store.previous("digits")) == ("2", "1")
    link = tmp_path / "store" / "digits" / "current"
    assert link.is_symlink() and os.readlink(link) == "2"
    assert store.rollback("digits") == "1"
    assert (store.current("digits"), store.previous("digits")) == ("1", "2")
    reopened = ModelStore(tmp_path / "store")  # what an agent restart sees
    assert (reopened.current("digits"), reopened.previous("digits")) == ("1", "2")


def test_rollback_without_a_previous_version_says_so(bundle: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add(bundle)
    store.activate("digits", "1")
    with pytest.raises(BundleError, match="no previous version"):
        store.rollback("digits")


def test_readers_never_see_a_missing_active_version_while_it_switches(
    bundle: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    for v in ("1", "2"):
        store.add(as_version(bundle, tmp_path, v))
    store.activate("digits", "1")
    seen: set[str | None] = set()
    stop = threading.Event()

    def read() -> None:
        reader = ModelStore(tmp_path / "store")
        while not stop.is_set():
            seen.add(reader.current("digits"))

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(300):
            store.activate("digits", "2" if i % 2 == 0 else "1")
    finally:
        stop.set()
        thread.join()
    assert seen <= {"1", "2"} and None not in seen


def test_prune_removes_the_oldest_but_never_the_active_or_previous(
    bundle: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store", keep=3)
    for v in ("1", "2", "3", "4", "5"):
        store.add(as_version(bundle, tmp_path, v))
    store.activate("digits", "1")
    store.activate("digits", "2")
    removed = store.prune("digits")
    assert removed == ["3", "4"]
    assert [v.version for v in store.versions("digits")] == ["1", "2", "5"]
    assert not (tmp_path / "store" / "digits" / "3").exists()
    assert store.prune("digits") == []


def test_prune_spares_a_version_being_rolled_out(bundle: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store", keep=2)
    for v in ("1", "2", "3"):
        store.add(as_version(bundle, tmp_path, v))
    store.activate("digits", "2")
    assert store.prune("digits", protect=("3",)) == ["1"]


def test_keep_below_two_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="at least 2"):
        ModelStore(tmp_path, keep=1)


def test_decisions_survive_in_the_state_file(bundle: Path, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.add(bundle)
    store.record("digits", "promoted", version="1", reason="probation passed")
    store.set_rollout("digits", {"strategy": "canary", "candidate": "2"})
    again = ModelStore(tmp_path / "store")
    state = again.read_state("digits")
    assert state["history"][-1]["action"] == "promoted"
    assert state["history"][-1]["reason"] == "probation passed"
    assert state["rollout"] == {"strategy": "canary", "candidate": "2"}


def test_discard_removes_a_version_that_never_served_but_never_the_active_one(
    bundle: Path, tmp_path: Path
) -> None:
    store = ModelStore(tmp_path / "store")
    for v in ("1", "2"):
        store.add(as_version(bundle, tmp_path, v))
    store.activate("digits", "1")
    with pytest.raises(BundleError, match="active or previous"):
        store.discard("digits", "1")
    store.discard("digits", "2")
    assert not store.has("digits", "2")
    assert [v.version for v in store.versions("digits")] == ["1"]
