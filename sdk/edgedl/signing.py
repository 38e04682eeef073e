"""Signed bundles: Ed25519 keys, a detached signature over ``manifest.json``, verification.

A bundle's ``manifest.json`` pins the model file by sha256 and size, so a signature over the
manifest's exact bytes vouches for the whole bundle: :func:`verify_bundle` checks the
signature against the trusted public keys, then the model file against the manifest.

The signature lives next to the manifest in ``signature.json``::

    {"schema_version": 1, "algorithm": "ed25519", "key_id": "3f0c1a...",
     "signature": "<base64 of the 64-byte Ed25519 signature over manifest.json's bytes>"}

Signing adds that file and never rewrites the manifest. A key's id is the first 16 hex
digits of the sha256 of its raw 32-byte public key, so a log line or an error can name a key
without showing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from .bundle import MANIFEST_FILE, Bundle, Manifest
from .errors import BundleError, KeyFileError, SignatureError

SIGNATURE_FILE = "signature.json"
SIGNATURE_SCHEMA_VERSION = 1
ALGORITHM = "ed25519"
PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
_KEY_ID_HEX = 16
_MAX_SIGNATURE_BYTES = 64 * 1024

TrustedKeys = Mapping[str, Ed25519PublicKey]


@dataclass(frozen=True)
class Signature:
    """A bundle's ``signature.json``: which key signed, and the raw signature bytes."""

    key_id: str
    signature: bytes
    algorithm: str = ALGORITHM


@dataclass(frozen=True)
class SignedBundle:
    """What :func:`sign_bundle` did: the bundle it signed and the key it used."""

    path: Path
    key_id: str
    name: str
    version: str


# -- keys -------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """The key's id: the first 16 hex digits of the sha256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_HEX]


def generate_keys(
    name: str, directory: str | os.PathLike[str] = ".", force: bool = False
) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as ``NAME.key`` (private, mode 0600) and ``NAME.pub``.

    The private key is PEM/PKCS8, unencrypted, and its file is created with mode 0600 from
    the start (never readable by others, not even for a moment). Existing files are kept
    unless ``force``. Return the paths of the private and the public key; raise
    :class:`KeyFileError` when they cannot be written.
    """
    if not name or name != Path(name).name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name (use --dir for a folder)")
    folder = Path(directory)
    private_path = folder / f"{name}{PRIVATE_SUFFIX}"
    public_path = folder / f"{name}{PUBLIC_SUFFIX}"
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise KeyFileError(f"{path} already exists (use --force to replace it)")
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_new_file(private_path, private_pem, mode=0o600, replace=force)
        _write_new_file(public_path, public_pem, mode=0o644, replace=force)
    except FileExistsError as exc:
        raise KeyFileError(f"{exc.filename} already exists (use --force to replace it)") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write the key pair in {folder}: {exc.strerror}") from exc
    return private_path, public_path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PEM); raise :class:`KeyFileError` saying what is wrong."""
    data = _read_key_file(Path(path), "private")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # the key is encrypted
        raise KeyFileError(f"{path}: encrypted private keys are not supported") from exc
    except ValueError as exc:
        hint = " (this is a public key: sign with the .key file)" if b"PUBLIC KEY" in data else ""
        raise KeyFileError(f"{path}: not a PEM private key{hint}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read an Ed25519 public key (PEM); raise :class:`KeyFileError` saying what is wrong."""
    data = _read_key_file(Path(path), "public")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: this is a private key; give the public key (.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


def load_public_keys(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Ed25519PublicKey]:
    """Read public keys; return them by key id (the trusted keys for :func:`verify_bundle`)."""
    return {key_id(key): key for key in map(load_public_key, paths)}


# -- signing ----------------------------------------------------------------------------


def sign_bundle(
    path: str | os.PathLike[str], private_key_path: str | os.PathLike[str]
) -> SignedBundle:
    """Sign a bundle directory or ``.tar`` in place with an Ed25519 private key.

    The bundle is verified first (its model file must match the manifest). The signature
    goes into ``signature.json`` next to ``manifest.json`` (replacing an earlier one); the
    manifest's bytes are not touched. A ``.tar`` is re-packed into a new file that replaces
    the old one atomically. Raise :class:`BundleError` or :class:`KeyFileError`.
    """
    private_key = load_private_key(private_key_path)
    source = Path(path)
    bundle = Bundle.open(source)
    manifest_bytes = (bundle.path / MANIFEST_FILE).read_bytes()
    kid = key_id(private_key.public_key())
    document = {
        "schema_version": SIGNATURE_SCHEMA_VERSION,
        "algorithm": ALGORITHM,
        "key_id": kid,
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode("ascii"),
    }
    data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
    if source.is_dir():
        _write_replacing(source / SIGNATURE_FILE, data)
    else:
        _add_to_tar(source, data, manifest_bytes)
    return SignedBundle(source, kid, bundle.manifest.name, bundle.manifest.version)


# -- verification -----------------------------------------------------------------------


def verify_bundle(
    bundle_or_path: Bundle | str | os.PathLike[str],
    trusted_public_keys: TrustedKeys | Iterable[Ed25519PublicKey],
    check_model: bool = True,
) -> str:
    """Check that a trusted key signed the bundle's manifest; return that key's id.

    Then (unless ``check_model`` is false, for a caller that has just verified it) check
    the model file against the manifest's size and sha256. Raise :class:`SignatureError`
    with the reason: the bundle is not signed, it is signed by a key that is not trusted,
    the signature does not match the manifest (changed after signing), or the model file no
    longer matches the manifest.
    """
    trusted = _as_trusted(trusted_public_keys)
    bundle = (
        bundle_or_path
        if isinstance(bundle_or_path, Bundle)
        else Bundle.open(bundle_or_path, verify=False)
    )
    what = f"bundle {bundle.manifest.name} {bundle.manifest.version}"
    document = read_signature(bundle)
    if document is None:
        raise SignatureError(f"{what} is not signed (no {SIGNATURE_FILE})")
    kid = document.key_id
    key = trusted.get(kid)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise SignatureError(
            f"{what} is signed by key {kid}, which is not a trusted key (trusted: {known})"
        )
    manifest_bytes = (bundle.path / MANIFEST_FILE).read_bytes()
    try:
        key.verify(document.signature, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError(
            f"{what}: the signature does not match {MANIFEST_FILE} "
            "(the manifest was changed after signing, or the signature is corrupt)"
        ) from exc
    try:
        signed = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise SignatureError(f"{what}: the signed {MANIFEST_FILE} is not a valid manifest") from exc
    # The manifest the caller acts on must be the signed one (the file could have changed
    # since the bundle was opened). created_at is left out: a manifest without it gets "now".
    unset = {"created_at"}
    if signed.model_dump(exclude=unset) != bundle.manifest.model_dump(exclude=unset):
        raise SignatureError(f"{what}: {MANIFEST_FILE} changed while it was being verified")
    if check_model:
        try:
            bundle.verify()
        except BundleError as exc:
            raise SignatureError(f"{exc} (it no longer matches the signed manifest)") from exc
    return kid


def read_signature(bundle: Bundle) -> Signature | None:
    """The bundle's ``signature.json``, None when the bundle is not signed.

    Raise :class:`SignatureError` when the file exists but is malformed.
    """
    path = bundle.path / SIGNATURE_FILE
    if not path.is_file():
        return None
    where = f"bundle {bundle.manifest.name} {bundle.manifest.version}: {SIGNATURE_FILE}"
    try:
        if path.stat().st_size > _MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{where} is too large to be a signature")
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{where} is not valid JSON") from exc
    if not isinstance(raw, dict):
        raise SignatureError(f"{where} must be a JSON object")
    if raw.get("schema_version") != SIGNATURE_SCHEMA_VERSION:
        raise SignatureError(
            f"{where}: unsupported schema_version {raw.get('schema_version')!r} "
            f"(this edgedl reads {SIGNATURE_SCHEMA_VERSION})"
        )
    if raw.get("algorithm") != ALGORITHM:
        raise SignatureError(f"{where}: unsupported algorithm {raw.get('algorithm')!r}")
    kid, signature = raw.get("key_id"), raw.get("signature")
    if not isinstance(kid, str) or not kid:
        raise SignatureError(f"{where}: key_id is missing")
    if not isinstance(signature, str):
        raise SignatureError(f"{where}: signature is missing")
    try:
        raw_signature = base64.b64decode(signature, validate=True)
    except binascii.Error as exc:
        raise SignatureError(f"{where}: signature is not base64") from exc
    return Signature(kid, raw_signature)


# -- internals --------------------------------------------------------------------------


def _as_trusted(keys: TrustedKeys | Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    if isinstance(keys, Mapping):
        return dict(keys)
    return {key_id(k): k for k in keys}


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{kind} key not found: {path}") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read {kind} key {path}: {exc.strerror}") from exc
    if len(data) > _MAX_SIGNATURE_BYTES:
        raise KeyFileError(f"{path}: too large to be a PEM key")
    return data


def _write_new_file(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Create ``path`` with ``mode`` from the first byte; replace it only when asked."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if ``path`` appeared meanwhile: never overwrite
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_replacing(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _add_to_tar(tar_path: Path, signature: bytes, manifest_bytes: bytes) -> None:
    """Re-pack ``tar_path`` with ``signature.json`` beside its manifest, replacing the file."""
    with open(tar_path, "rb") as fh:
        head = fh.read(6)
    tmp = tar_path.with_name(f".{tar_path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with tarfile.open(tar_path, "r:*") as src, _open_for_writing(tmp, head) as out:
            manifest_member = _manifest_member(src, tar_path)
            prefix = manifest_member.name[: -len(MANIFEST_FILE)]
            extracted = src.extractfile(manifest_member)
            if extracted is None or extracted.read() != manifest_bytes:
                raise BundleError(f"{tar_path}: the archive changed while it was being signed")
            signature_name = prefix + SIGNATURE_FILE
            for member in src:
                if _plain(member.name) == _plain(signature_name):
                    continue  # an earlier signature: replaced below
                out.addfile(member, src.extractfile(member) if member.isfile() else None)
            info = tarfile.TarInfo(signature_name)
            info.size = len(signature)
            info.mode = manifest_member.mode
            info.mtime = int(manifest_member.mtime)
            info.uid, info.gid = manifest_member.uid, manifest_member.gid
            info.uname, info.gname = manifest_member.uname, manifest_member.gname
            out.addfile(info, io.BytesIO(signature))
        shutil.copymode(tar_path, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, tar_path)
    except (tarfile.TarError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise BundleError(f"{tar_path}: cannot re-pack the bundle ({exc})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_for_writing(path: Path, like: bytes) -> tarfile.TarFile:
    """A new tar at ``path`` compressed like the archive whose first bytes are ``like``."""
    if like.startswith(b"\x1f\x8b"):
        return tarfile.open(path, "w:gz")
    if like.startswith(b"BZh"):
        return tarfile.open(path, "w:bz2")
    if like.startswith(b"\xfd7zXZ\x00"):
        return tarfile.open(path, "w:xz")
    return tarfile.open(path, "w")


def _manifest_member(tar: tarfile.TarFile, tar_path: Path) -> tarfile.TarInfo:
    # The layouts Bundle.open accepts: manifest.json at the top, or in the one top folder.
    found = [
        m
        for m in tar.getmembers()
        if m.isfile()
        and _plain(m.name).split("/")[-1] == MANIFEST_FILE
        and _plain(m.name).count("/") <= 1
    ]
    if not found:
        raise BundleError(f"{tar_path}: the archive holds no {MANIFEST_FILE}")
    return min(found, key=lambda m: _plain(m.name).count("/"))


def _plain(name: str) -> str:
    """A member name without a leading ``./`` or ``/`` (how tar tools differ)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))
