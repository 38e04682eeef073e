"""The bundle: what ``edgedl convert`` writes and the agent loads (design contract 3.1).

A bundle is a directory (or a ``.tar`` of one) holding the model file, ``manifest.json`` and
``report.json``. The manifest pins the model file by sha256 and size, describes every input
and output tensor (with the scale and zero point of integer tensors, so a runtime can take
float data), and carries the reference profile of the data the model was validated on.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import secrets
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ._version import __version__
from .errors import BundleError
from .profile import Profile

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
MANIFEST_SCHEMA_VERSION = 1

Runtime = Literal["litert", "onnxruntime"]
DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Quantization(BaseModel):
    """Affine quantization of an integer tensor: ``real = scale * (q - zero_point)``."""

    model_config = ConfigDict(extra="forbid")
    scale: float = Field(gt=0)
    zero_point: int


class TensorSpec(BaseModel):
    """One input or output of a model. ``-1`` in ``shape`` is a dimension of any size."""

    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    dtype: str
    quantization: Quantization | None = None

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unsupported dtype {v!r} (one of {', '.join(DTYPES)})")
        return v

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``shape`` without the batch dimension."""
        return tuple(self.shape[1:])


class Manifest(BaseModel):
    """``manifest.json``: what a bundle holds and how to feed it. Unknown keys are ignored."""

    model_config = ConfigDict(extra="ignore")
    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    version: str
    target: str
    runtime: Runtime
    model_file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    labels: list[str] | None = None
    device: str | None = None
    created_at: str = Field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    edgedl_version: str = __version__
    profile: dict[str, Any] | None = None
    #: P(correct) per top-1 confidence bin, fitted on the validation set (edgedl.calibration);
    #: None for bundles converted without labelled validation data (no accuracy estimate).
    calibration: dict[str, Any] | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {v} (this edgedl reads 1)")
        return v

    @field_validator("name", "version")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("model_file")
    @classmethod
    def _plain_file_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v in (".", "..") or v == MANIFEST_FILE:
            raise ValueError(f"model_file must be a plain file name inside the bundle, not {v!r}")
        return v

    def reference_profile(self) -> Profile | None:
        """The reference profile, or None when the bundle was made without data."""
        return Profile.from_dict(self.profile) if self.profile else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "manifest"
    return f"{where}: {err['msg']}"


@dataclass(frozen=True)
class Bundle:
    """An opened bundle directory. Use :meth:`open`; it verifies the model file by default."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> Bundle:
        """Open a bundle directory or ``.tar``; raise :class:`BundleError` when it is unusable.

        With ``verify`` (the default) the model file's size and sha256 are checked against
        the manifest, so a truncated or altered file is refused before any runtime sees it.
        """
        p = Path(path)
        if not p.exists():
            raise BundleError(f"bundle not found: {p}")
        if p.is_file() and tarfile.is_tarfile(p):
            p = _extract_tar(p)
        if not p.is_dir():
            raise BundleError(f"{p} is not a bundle (expected a directory or a .tar of one)")
        manifest_path = p / MANIFEST_FILE
        if not manifest_path.is_file():
            raise BundleError(f"{p} is not a bundle: no {MANIFEST_FILE}")
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise BundleError(f"{manifest_path}: expected a JSON object")
        try:
            manifest = Manifest.model_validate(raw)
        except ValidationError as exc:
            raise BundleError(f"{manifest_path}: {_first_error(exc)}") from exc
        bundle = cls(path=p, manifest=manifest)
        if verify:
            bundle.verify()
        return bundle

    @property
    def model_path(self) -> Path:
        """Path of the model file inside the bundle."""
        return self.path / self.manifest.model_file

    def verify(self) -> None:
        """Raise :class:`BundleError` unless the model file matches the manifest's size and sha256."""
        model = self.model_path
        if not model.is_file():
            raise BundleError(
                f"bundle {self.path}: model file {self.manifest.model_file} is missing"
            )
        size = model.stat().st_size
        if size != self.manifest.size_bytes:
            raise BundleError(
                f"bundle {self.path}: {self.manifest.model_file} is {size} bytes, "
                f"the manifest says {self.manifest.size_bytes}"
            )
        actual = sha256_file(model)
        if actual != self.manifest.sha256:
            raise BundleError(
                f"bundle {self.path}: sha256 mismatch for {self.manifest.model_file} "
                f"(manifest {self.manifest.sha256[:12]}…, file {actual[:12]}…): "
                "the file was altered or corrupted"
            )

    def report(self) -> dict[str, Any] | None:
        """The conversion report, or None when the bundle has none."""
        path = self.path / REPORT_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{path}: not valid JSON ({exc})") from exc
        return data if isinstance(data, dict) else None


def _extract_tar(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="edgedl-bundle-"))
    atexit.register(shutil.rmtree, target, True)
    try:
        with tarfile.open(path) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path}: cannot extract bundle ({exc})") from exc
    entries = [e for e in target.iterdir()]
    if (target / MANIFEST_FILE).is_file():
        return target
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    raise BundleError(f"{path}: the archive holds no {MANIFEST_FILE}")


@contextmanager
def atomic_directory(output: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh staging directory that becomes ``output`` only if the block succeeds.

    On any exception the staging directory is removed and ``output`` is untouched, so no
    partial bundle is ever left. With ``overwrite`` an existing ``output`` is replaced.
    """
    output = output.resolve()
    if output.exists() and not overwrite:
        raise BundleError(f"{output} already exists (use --force to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir (not mkdtemp, which is always 0700) so the bundle follows the umask.
    staging = output.parent / f".{output.name}.tmp-{secrets.token_hex(6)}"
    staging.mkdir()
    try:
        yield staging
        for child in staging.iterdir():
            with open(child, "rb") as fh:
                os.fsync(fh.fileno())
        old: Path | None = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            old.rmdir()
            output.rename(old)
        staging.rename(output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_bundle(
    output: Path,
    model_file: Path,
    manifest: Manifest,
    report: dict[str, Any],
    overwrite: bool = False,
) -> Bundle:
    """Write a complete bundle atomically and return it opened (and verified)."""
    with atomic_directory(output, overwrite=overwrite) as staging:
        shutil.copyfile(model_file, staging / manifest.model_file)
        (staging / MANIFEST_FILE).write_text(
            manifest.model_dump_json(indent=2, exclude_none=False) + "\n", encoding="utf-8"
        )
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return Bundle.open(output)


def pack_bundle(bundle_dir: Path, tar_path: Path) -> Path:
    """Write ``bundle_dir`` as a single uncompressed ``.tar`` (model files compress poorly)."""
    Bundle.open(bundle_dir)
    tmp = tar_path.with_name(f".{tar_path.name}.tmp")
    try:
        with tarfile.open(tmp, "w") as tar:
            tar.add(bundle_dir, arcname=bundle_dir.name)
        tmp.replace(tar_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tar_path
