"""``[security]``: which bundles the agent accepts, by who signed them.

::

    [security]
    trusted_keys = ["/etc/edgedl/keys/release.pub"]   # Ed25519 public keys (edgedl keys generate)
    require_signature = true                           # the default when any key is listed

With signatures required, every bundle the agent is asked to serve (a configured
``[[models]]`` bundle, a deployment, a stored version loaded at a restart or a rollback) must
be signed by one of the trusted keys, and its model file must match the signed manifest
(:func:`edgedl.signing.verify_bundle`). Anything else is refused with the reason, and the
version serving so far keeps serving. Logs name a key only by its id, never its bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgedl.bundle import Bundle
from edgedl.errors import ConfigError, EdgeDLError, KeyFileError
from edgedl.signing import TrustedKeys, key_id, load_public_key, verify_bundle

from .pipeline.config import ModelStageConfig, PipelineConfig

log = logging.getLogger(__name__)


class SecurityConfig(BaseModel):
    """``[security]`` in agent.toml."""

    model_config = ConfigDict(extra="forbid")
    trusted_keys: list[str] = Field(
        default_factory=list, description="paths of the Ed25519 public keys (PEM) trusted"
    )
    require_signature: bool | None = Field(
        default=None, description="refuse unsigned bundles (default: true when keys are listed)"
    )

    @model_validator(mode="after")
    def _keys_when_required(self) -> SecurityConfig:
        if self.require_signature and not self.trusted_keys:
            raise ValueError("require_signature is true but no trusted_keys are listed")
        return self

    @property
    def signatures_required(self) -> bool:
        """Whether bundles must be signed (explicitly, or because keys are listed)."""
        if self.require_signature is None:
            return bool(self.trusted_keys)
        return self.require_signature


class BundleAdmission:
    """Decides whether a bundle may be served on this agent (see the module docstring)."""

    def __init__(self, trusted: TrustedKeys, required: bool) -> None:
        self.trusted = dict(trusted)
        self.required = required

    @classmethod
    def from_config(cls, config: SecurityConfig) -> BundleAdmission:
        """Load the trusted keys; raise :class:`ConfigError` naming the key that is wrong."""
        trusted: dict[str, Ed25519PublicKey] = {}
        for i, path in enumerate(config.trusted_keys):
            try:
                key = load_public_key(path)
            except KeyFileError as exc:
                raise ConfigError(f"security.trusted_keys.{i}: {exc}") from exc
            trusted[key_id(key)] = key
        if config.signatures_required:
            log.info("bundles must be signed by one of the keys %s", ", ".join(sorted(trusted)))
        return cls(trusted, config.signatures_required)

    def admit(self, bundle: Bundle, check_model: bool = True) -> str | None:
        """Raise :class:`~edgedl.errors.SignatureError` unless ``bundle`` may be served.

        Returns the id of the key that signed it (None when signatures are not required).
        ``check_model`` also verifies the model file against the manifest (whatever the
        setting); leave it on unless the caller has just done so.
        """
        if not self.required:
            if check_model:
                bundle.verify()
            return None
        return verify_bundle(bundle, self.trusted, check_model=check_model)

    def admit_pipelines(self, pipelines: Iterable[PipelineConfig], base_dir: str = ".") -> None:
        """Check the bundle of every pipeline's ``model`` stage before the pipelines load."""
        if not self.required:
            return
        for pipeline in pipelines:
            for i, stage in enumerate(pipeline.stages):
                if isinstance(stage, ModelStageConfig):
                    bundle = Bundle.open(Path(base_dir) / stage.bundle, verify=False)
                    try:
                        self.admit(bundle)
                    except EdgeDLError as exc:
                        raise type(exc)(
                            f"pipeline {pipeline.name!r}, stage {pipeline.stage_name(i)!r}: {exc}"
                        ) from exc
