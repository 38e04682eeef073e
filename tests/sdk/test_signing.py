"""Signed bundles: key pairs, signing directories and .tar bundles, and every way to break one."""

from __future__ import annotations

import base64
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from tests.conftest import run_edgedl

from edgedl.bundle import MANIFEST_FILE, Bundle, Manifest, TensorSpec, pack_bundle, write_bundle
from edgedl.bundle import sha256_file as sha256_of
from edgedl.errors import BundleError, KeyFileError, SignatureError
from edgedl.signing import (
    SIGNATURE_FILE,
    generate_keys,
    key_id,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign_bundle,
    verify_bundle,
)

MODEL_BYTES = bytes(range(256)) * 64 + b"signed model"


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    """Two key pairs: the release key the devices trust, and somebody else's."""
    return {name: generate_keys(name, tmp_path / "keys") for name in ("release", "somebody-else")}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    model = tmp_path / "model.tflite"
    model.write_bytes(MODEL_BYTES)
    manifest = Manifest(
        name="digits",
        version="2",
        target="tflite-int8",
        runtime="litert",
        model_file="model.tflite",
        sha256=sha256_of(model),
        size_bytes=model.stat().st_size,
        inputs=[TensorSpec(name="x", shape=[-1, 4], dtype="float32")],
        outputs=[TensorSpec(name="y", shape=[-1, 2], dtype="float32")],
        labels=["cat", "dog"],
    )
    return write_bundle(tmp_path / "digits-v2", model, manifest, {}).path


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask: a key file must still be private."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def trusted(keys: dict[str, tuple[Path, Path]], *names: str) -> dict[str, Ed25519PublicKey]:
    return load_public_keys(keys[n][1] for n in names)


# -- keys --------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero")
def test_generated_private_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    private, public = generate_keys("release", tmp_path / "k")
    assert (private.name, public.name) == ("release.key", "release.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8 PEM
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public))
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith(".")]


def test_an_existing_key_pair_is_kept_unless_forced(tmp_path: Path) -> None:
    private, public = generate_keys("release", tmp_path)
    before = private.read_bytes()
    with pytest.raises(KeyFileError, match=r"release\.key already exists .*--force"):
        generate_keys("release", tmp_path)
    assert private.read_bytes() == before
    public.unlink()  # half a pair left: still refused, the private key is never lost
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keys("release", tmp_path)
    generate_keys("release", tmp_path, force=True)
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_key_files_of_the_wrong_kind_are_refused_with_a_reason(
    keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    private, public = keys["release"]
    with pytest.raises(KeyFileError, match="this is a public key"):
        load_private_key(public)
    with pytest.raises(KeyFileError, match="this is a private key"):
        load_public_key(private)
    with pytest.raises(KeyFileError, match="not found"):
        load_public_key(tmp_path / "nope.pub")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        load_public_key(garbage)
    with pytest.raises(KeyFileError, match="plain file name"):
        generate_keys("../escape", tmp_path)


# -- signing and verifying a directory ---------------------------------------------------


def test_a_signed_bundle_verifies_and_its_manifest_is_untouched(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    manifest_before = (bundle / MANIFEST_FILE).read_bytes()
    signed = sign_bundle(bundle, keys["release"][0])
    assert (bundle / MANIFEST_FILE).read_bytes() == manifest_before
    document = json.loads((bundle / SIGNATURE_FILE).read_text())
    assert document["algorithm"] == "ed25519"
    assert document["key_id"] == signed.key_id == key_id(load_public_key(keys["release"][1]))
    assert len(base64.b64decode(document["signature"])) == 64
    assert verify_bundle(bundle, trusted(keys, "somebody-else", "release")) == signed.key_id
    # Keys as a plain list work too, and the opened bundle is still a valid one.
    assert verify_bundle(Bundle.open(bundle), [load_public_key(keys["release"][1])])


def test_an_unsigned_bundle_is_refused(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    with pytest.raises(SignatureError, match=r"digits 2 is not signed \(no signature.json\)"):
        verify_bundle(bundle, trusted(keys, "release"))


def test_a_bundle_signed_by_another_key_is_refused(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    other = sign_bundle(bundle, keys["somebody-else"][0]).key_id
    release = key_id(load_public_key(keys["release"][1]))
    with pytest.raises(SignatureError) as refused:
        verify_bundle(bundle, trusted(keys, "release"))
    assert f"signed by key {other}, which is not a trusted key (trusted: {release})" in str(
        refused.value
    )


def test_a_manifest_edited_after_signing_is_refused(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    sign_bundle(bundle, keys["release"][0])
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["labels"] = ["dog", "cat"]  # a valid manifest, just not the one that was signed
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    Bundle.open(bundle)  # the bundle itself is still consistent
    with pytest.raises(SignatureError, match=r"signature does not match manifest\.json"):
        verify_bundle(bundle, trusted(keys, "release"))


def test_a_swapped_model_with_a_matching_manifest_is_refused(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    """The attack a plain sha256 cannot catch: new model file, manifest updated to match."""
    sign_bundle(bundle, keys["release"][0])
    model = bundle / "model.tflite"
    model.write_bytes(MODEL_BYTES[::-1])
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["sha256"] = sha256_of(model)
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    Bundle.open(bundle)
    with pytest.raises(SignatureError, match="signature does not match"):
        verify_bundle(bundle, trusted(keys, "release"))


def test_a_model_file_changed_after_signing_is_refused(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    sign_bundle(bundle, keys["release"][0])
    data = bytearray((bundle / "model.tflite").read_bytes())
    data[100] ^= 0xFF
    (bundle / "model.tflite").write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"sha256 mismatch .* no longer matches the signed"):
        verify_bundle(bundle, trusted(keys, "release"))


def test_a_damaged_signature_is_refused(bundle: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    sign_bundle(bundle, keys["release"][0])
    path = bundle / SIGNATURE_FILE
    document = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(document["signature"]))
    raw[0] ^= 0x01
    path.write_text(json.dumps({**document, "signature": base64.b64encode(raw).decode()}))
    with pytest.raises(SignatureError, match="signature does not match"):
        verify_bundle(bundle, trusted(keys, "release"))
    for broken, reason in (
        ("{", "not valid JSON"),
        (json.dumps({**document, "algorithm": "rsa"}), "unsupported algorithm 'rsa'"),
        (json.dumps({**document, "signature": "***"}), "not base64"),
        (json.dumps({**document, "key_id": None}), "key_id is missing"),
    ):
        path.write_text(broken)
        with pytest.raises(SignatureError, match=reason):
            verify_bundle(bundle, trusted(keys, "release"))


def test_signing_refuses_a_bundle_whose_model_does_not_match(
    bundle: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    (bundle / "model.tflite").write_bytes(MODEL_BYTES[:-1] + b"X")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        sign_bundle(bundle, keys["release"][0])
    assert not (bundle / SIGNATURE_FILE).exists()


# -- .tar bundles ------------------------------------------------------------------------


def _members(tar_path: Path) -> dict[str, bytes]:
    with tarfile.open(tar_path) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_a_tar_bundle_is_signed_in_place_and_verifies(
    bundle: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    tar_path = pack_bundle(bundle, tmp_path / "digits-v2.tar")
    before = _members(tar_path)
    signed = sign_bundle(tar_path, keys["release"][0])
    after = _members(tar_path)
    assert set(after) == {*before, "digits-v2/signature.json"}
    assert all(after[name] == data for name, data in before.items())  # nothing else changed
    assert verify_bundle(tar_path, trusted(keys, "release")) == signed.key_id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".digits-v2.tar")]

    # Signing again (another key) replaces the signature instead of adding a second one.
    sign_bundle(tar_path, keys["somebody-else"][0])
    assert list(_members(tar_path)).count("digits-v2/signature.json") == 1
    with pytest.raises(SignatureError, match="not a trusted key"):
        verify_bundle(tar_path, trusted(keys, "release"))


def test_a_flat_gzipped_tar_keeps_its_layout_and_compression(
    bundle: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    tar_path = tmp_path / "flat.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for child in bundle.iterdir():
            tar.add(child, arcname=child.name)
    sign_bundle(tar_path, keys["release"][0])
    assert tar_path.read_bytes()[:2] == b"\x1f\x8b"
    assert SIGNATURE_FILE in _members(tar_path)
    assert verify_bundle(tar_path, trusted(keys, "release"))


def test_a_tampered_tar_bundle_is_refused(
    bundle: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    sign_bundle(bundle, keys["release"][0])
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["version"] = "3"
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    tar_path = tmp_path / "edited.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(bundle, arcname="digits-v3")
    with pytest.raises(SignatureError, match="digits 3: the signature does not match"):
        verify_bundle(tar_path, trusted(keys, "release"))


# -- the commands ------------------------------------------------------------------------


def test_commands_generate_sign_and_verify(bundle: Path, tmp_path: Path) -> None:
    made = run_edgedl("keys", "generate", "release", "--dir", tmp_path / "keys")
    assert made.code == 0, made.stderr
    private, public = tmp_path / "keys" / "release.key", tmp_path / "keys" / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    kid = key_id(load_public_key(public))
    assert kid in made.stdout and "release.key" in made.stdout

    again = run_edgedl("keys", "generate", "release", "--dir", tmp_path / "keys")
    assert again.code == 1
    assert again.last_error_line == f"error: {private} already exists (use --force to replace it)"

    signed = run_edgedl("sign", bundle, "--key", private)
    assert signed.code == 0, signed.stderr
    assert f"signed digits 2 ({bundle}) with key {kid}" in signed.stdout

    other = generate_keys("other", tmp_path / "keys")[1]
    verified = run_edgedl("verify", bundle, "--key", other, "--key", public)
    assert verified.code == 0, verified.stderr
    assert verified.stdout.strip() == (
        f"digits 2: signed by key {kid} ({public}), model.tflite verified"
    )


def test_verify_command_gives_one_line_for_each_failure(
    bundle: Path, keys: dict[str, tuple[Path, Path]], tmp_path: Path
) -> None:
    public = keys["release"][1]
    unsigned = run_edgedl("verify", bundle, "--key", public)
    sign_bundle(bundle, keys["somebody-else"][0])
    unknown = run_edgedl("verify", bundle, "--key", public)
    sign_bundle(bundle, keys["release"][0])
    (bundle / "model.tflite").write_bytes(MODEL_BYTES[::-1])
    altered = run_edgedl("verify", bundle, "--key", public)
    no_key = run_edgedl("verify", bundle, "--key", tmp_path / "missing.pub")
    for result, reason in (
        (unsigned, "digits 2 is not signed"),
        (unknown, "which is not a trusted key"),
        (altered, "sha256 mismatch"),
        (no_key, "public key not found"),
    ):
        assert result.code == 1, result.stdout
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.last_error_line.startswith("error: ") and reason in result.last_error_line
