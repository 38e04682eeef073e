"""The bundle format: manifest validation, opening, verification, atomic writes, packing."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from edgedl.bundle import (
    MANIFEST_FILE,
    REPORT_FILE,
    Bundle,
    Manifest,
    TensorSpec,
    atomic_directory,
    pack_bundle,
    sha256_file,
    write_bundle,
)
from edgedl.errors import BundleError
from edgedl.profile import Profile

MODEL_BYTES = bytes(range(256)) * 40 + b"edgedl test model"


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "model.tflite"
    path.parent.mkdir()
    path.write_bytes(MODEL_BYTES)
    return path


def _manifest_dict(model: Path | None = None, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "digits",
        "version": "1.0.0",
        "target": "tflite-int8",
        "runtime": "litert",
        "model_file": "model.tflite",
        "sha256": sha256_file(model) if model else "0" * 64,
        "size_bytes": model.stat().st_size if model else 0,
        "inputs": [
            {
                "name": "x",
                "shape": [-1, 8, 8, 1],
                "dtype": "int8",
                "quantization": {"scale": 1 / 255, "zero_point": -128},
            }
        ],
        "outputs": [{"name": "probs", "shape": [-1, 10], "dtype": "float32"}],
        "labels": [str(i) for i in range(10)],
    }
    data.update(over)
    return data


def _write(tmp_path: Path, model: Path, name: str = "bundle", **over: Any) -> Bundle:
    manifest = Manifest.model_validate(_manifest_dict(model, **over))
    return write_bundle(tmp_path / name, model, manifest, {"accuracy": 0.97})


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _fill_and_fail(out: Path, staged: list[Path], overwrite: bool = False) -> None:
    """Write a file into a staging directory for ``out``, then fail."""
    with atomic_directory(out, overwrite=overwrite) as staging:
        staged.append(staging)
        (staging / "partial.bin").write_bytes(b"x" * 100)
        raise RuntimeError("boom")


# --- Manifest ---------------------------------------------------------------------------


def test_valid_manifest():
    m = Manifest.model_validate(_manifest_dict())
    assert m.schema_version == 1
    assert m.inputs[0].sample_shape == (8, 8, 1)
    assert m.inputs[0].quantization is not None
    assert m.inputs[0].quantization.zero_point == -128
    assert m.profile is None
    assert m.reference_profile() is None
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again == m


def test_manifest_ignores_unknown_keys():
    m = Manifest.model_validate(_manifest_dict(future_field={"a": 1}))
    assert not hasattr(m, "future_field")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../x"),
        ("name", "a b"),
        ("name", ""),
        ("name", ".hidden"),
        ("name", "x" * 129),
        ("name", "a/b"),
        ("version", "1.0 beta"),
        ("sha256", "A" * 64),
        ("sha256", "0" * 63),
        ("sha256", "g" * 64),
        ("schema_version", 2),
        ("schema_version", 0),
        ("model_file", "sub/model.tflite"),
        ("model_file", "..\\model.tflite"),
        ("model_file", ".."),
        ("model_file", ""),
        ("model_file", MANIFEST_FILE),
        ("runtime", "tensorflow"),
        ("size_bytes", -1),
        ("inputs", []),
        ("outputs", []),
    ],
)
def test_manifest_rejects(field, value):
    with pytest.raises(ValidationError) as info:
        Manifest.model_validate(_manifest_dict(**{field: value}))
    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("dtype", ["float64", "int4", "string", "Float32"])
def test_manifest_rejects_unsupported_dtype(dtype):
    spec = {"name": "x", "shape": [-1, 4], "dtype": dtype}
    with pytest.raises(ValidationError, match="unsupported dtype"):
        Manifest.model_validate(_manifest_dict(inputs=[spec]))


@pytest.mark.parametrize(
    "quantization",
    [{"scale": 0.0, "zero_point": 0}, {"scale": -1.0, "zero_point": 0}, {"scale": 1.0}],
)
def test_manifest_rejects_bad_quantization(quantization):
    spec = {"name": "x", "shape": [-1, 4], "dtype": "int8", "quantization": quantization}
    with pytest.raises(ValidationError):
        Manifest.model_validate(_manifest_dict(inputs=[spec]))


def test_tensor_spec_forbids_unknown_keys():
    with pytest.raises(ValidationError):
        TensorSpec.model_validate({"name": "x", "shape": [1], "dtype": "int8", "layout": "NHWC"})


@pytest.mark.parametrize("field", ["name", "version"])
def test_manifest_rejects_trailing_newline(field):
    with pytest.raises(ValidationError):
        Manifest.model_validate(_manifest_dict(**{field: "digits\n"}))


def test_manifest_reference_profile_round_trip():
    rng = np.random.default_rng(0)
    profile = Profile.from_reference({"x": rng.random((50, 4))}, {"y": rng.random((50, 3))})
    m = Manifest.model_validate(_manifest_dict(profile=profile.to_dict()))
    back = Manifest.model_validate_json(m.model_dump_json()).reference_profile()
    assert back is not None
    assert back.to_dict() == profile.to_dict()


# --- Bundle.open ------------------------------------------------------------------------


def test_open_missing_path(tmp_path):
    with pytest.raises(BundleError, match="bundle not found") as info:
        Bundle.open(tmp_path / "nope")
    assert "nope" in str(info.value)


def test_open_directory_without_manifest(tmp_path):
    (tmp_path / "model.tflite").write_bytes(MODEL_BYTES)
    with pytest.raises(BundleError, match=f"no {MANIFEST_FILE}"):
        Bundle.open(tmp_path)


def test_open_plain_file_that_is_not_a_bundle(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(BundleError, match="not a bundle"):
        Bundle.open(path)


@pytest.mark.parametrize("text", ["{not json", "", "\xff"])
def test_open_invalid_json(tmp_path, text):
    (tmp_path / MANIFEST_FILE).write_bytes(text.encode("latin-1"))
    with pytest.raises(BundleError, match="not valid JSON") as info:
        Bundle.open(tmp_path)
    assert MANIFEST_FILE in str(info.value)


def test_open_json_that_is_not_an_object(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        Bundle.open(tmp_path)


@pytest.mark.parametrize(
    ("over", "named"),
    [
        ({"sha256": "xyz"}, "sha256"),
        ({"schema_version": 7}, "schema_version"),
        ({"model_file": "../model.tflite"}, "model_file"),
        ({"name": "a b"}, "name"),
    ],
)
def test_open_manifest_failing_validation(tmp_path, model_file, over, named):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(_manifest_dict(model_file, **over)))
    with pytest.raises(BundleError) as info:
        Bundle.open(tmp_path)
    message = str(info.value)
    assert MANIFEST_FILE in message
    assert message.split(f"{MANIFEST_FILE}: ", 1)[1].startswith(named)


def test_open_manifest_missing_a_required_key(tmp_path, model_file):
    data = _manifest_dict(model_file)
    del data["runtime"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match="runtime"):
        Bundle.open(tmp_path)


# --- write_bundle and verification ------------------------------------------------------


def test_write_bundle_creates_a_verified_bundle(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    out = tmp_path / "bundle"
    assert bundle.path == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_FILE, REPORT_FILE, "model.tflite"]
    )
    assert (out / "model.tflite").read_bytes() == MODEL_BYTES
    assert bundle.model_path.read_bytes() == MODEL_BYTES
    raw = json.loads((out / MANIFEST_FILE).read_text())
    assert raw["sha256"] == sha256_file(model_file)
    assert raw["size_bytes"] == len(MODEL_BYTES)
    assert json.loads((out / REPORT_FILE).read_text()) == {"accuracy": 0.97}
    assert bundle.report() == {"accuracy": 0.97}
    opened = Bundle.open(out)
    assert opened.manifest == bundle.manifest
    assert _leftovers(tmp_path, "bundle") == []


def test_write_bundle_refuses_existing_output(tmp_path, model_file):
    _write(tmp_path, model_file)
    with pytest.raises(BundleError, match="already exists"):
        _write(tmp_path, model_file)
    manifest = Manifest.model_validate(_manifest_dict(model_file, version="2.0.0"))
    bundle = write_bundle(tmp_path / "bundle", model_file, manifest, {}, overwrite=True)
    assert Bundle.open(tmp_path / "bundle").manifest.version == "2.0.0"
    assert bundle.report() == {}


def test_report_missing_or_invalid(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    (bundle.path / REPORT_FILE).write_text("{broken")
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.report()
    (bundle.path / REPORT_FILE).unlink()
    assert bundle.report() is None


def test_altered_byte_fails_sha256(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    data = bytearray(bundle.model_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    bundle.model_path.write_bytes(bytes(data))
    assert bundle.model_path.stat().st_size == len(MODEL_BYTES)
    with pytest.raises(BundleError, match="sha256") as info:
        Bundle.open(bundle.path)
    assert "model.tflite" in str(info.value)


def test_truncated_model_fails_size(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    bundle.model_path.write_bytes(MODEL_BYTES[:-10])
    with pytest.raises(BundleError) as info:
        Bundle.open(bundle.path)
    message = str(info.value)
    assert f"{len(MODEL_BYTES) - 10} bytes" in message
    assert str(len(MODEL_BYTES)) in message


def test_missing_model_file(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    bundle.model_path.unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.open(bundle.path)


def test_open_without_verify(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    bundle.model_path.write_bytes(b"garbage")
    opened = Bundle.open(bundle.path, verify=False)
    assert opened.manifest.name == "digits"
    with pytest.raises(BundleError, match="bytes"):
        opened.verify()


# --- atomic_directory -------------------------------------------------------------------


def test_atomic_directory_success(tmp_path):
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        assert staging.parent == out.parent.resolve()
        assert staging.name.startswith(".out.tmp-")
        assert not out.exists()
        (staging / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    assert not staging.exists()
    assert _leftovers(tmp_path, "out") == []


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out"
    staged: list[Path] = []
    with pytest.raises(RuntimeError, match="boom"):
        _fill_and_fail(out, staged)
    assert not out.exists()
    assert staged
    assert not staged[0].exists()
    assert _leftovers(tmp_path, "out") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_atomic_directory_refuses_existing_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    entered = False
    with pytest.raises(BundleError, match="already exists"), atomic_directory(out):
        entered = True
    assert not entered
    assert (out / "keep.txt").read_text() == "old"
    assert _leftovers(tmp_path, "out") == []


def test_atomic_directory_overwrite_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_directory(out, overwrite=True) as staging:
        assert (out / "old.txt").exists()  # untouched until the block succeeds
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path, "out") == []


def test_atomic_directory_overwrite_failure_keeps_old_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        _fill_and_fail(out, [], overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert _leftovers(tmp_path, "out") == []


def test_atomic_directory_creates_missing_parents(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with atomic_directory(out) as staging:
        (staging / "f").write_text("f")
    assert (out / "f").is_file()


def test_atomic_directory_output_has_normal_permissions(tmp_path):
    ref = tmp_path / "ref"
    ref.mkdir()
    expected = ref.stat().st_mode & 0o777
    if expected == 0o700:
        pytest.skip("the umask already makes new directories private")
    out = tmp_path / "out"
    with atomic_directory(out) as staging:
        (staging / "f").write_text("f")
    assert oct(out.stat().st_mode & 0o777) == oct(expected)


# --- pack_bundle ------------------------------------------------------------------------


def test_pack_bundle_and_open_tar(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    tar_path = pack_bundle(bundle.path, tmp_path / "digits.tar")
    assert tar_path == tmp_path / "digits.tar"
    assert tarfile.is_tarfile(tar_path)
    assert not (tmp_path / ".digits.tar.tmp").exists()
    with tarfile.open(tar_path) as tar:
        names = sorted(tar.getnames())
    assert names == sorted(
        ["bundle", f"bundle/{MANIFEST_FILE}", f"bundle/{REPORT_FILE}", "bundle/model.tflite"]
    )
    opened = Bundle.open(tar_path)
    assert opened.path != bundle.path
    assert opened.manifest == bundle.manifest
    assert opened.model_path.read_bytes() == MODEL_BYTES
    assert opened.report() == {"accuracy": 0.97}


def test_open_flat_tar(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    tar_path = tmp_path / "flat.tar"
    with tarfile.open(tar_path, "w") as tar:
        for child in bundle.path.iterdir():
            tar.add(child, arcname=child.name)
    assert Bundle.open(tar_path).manifest == bundle.manifest


def test_open_tar_with_altered_model(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    data = bytearray(bundle.model_path.read_bytes())
    data[0] ^= 0xFF
    bundle.model_path.write_bytes(bytes(data))
    tar_path = tmp_path / "bad.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(bundle.path, arcname="bundle")
    with pytest.raises(BundleError, match="sha256"):
        Bundle.open(tar_path)


def test_open_tar_without_manifest(tmp_path):
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text(name)
    tar_path = tmp_path / "empty.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(tmp_path / "a.txt", arcname="a.txt")
        tar.add(tmp_path / "b.txt", arcname="b.txt")
    with pytest.raises(BundleError, match=f"no {MANIFEST_FILE}"):
        Bundle.open(tar_path)


def test_pack_bundle_refuses_a_corrupt_bundle(tmp_path, model_file):
    bundle = _write(tmp_path, model_file)
    bundle.model_path.write_bytes(b"short")
    with pytest.raises(BundleError):
        pack_bundle(bundle.path, tmp_path / "digits.tar")
    assert not (tmp_path / "digits.tar").exists()
    assert not (tmp_path / ".digits.tar.tmp").exists()


def test_sha256_file(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
