"""Every error a user can cause derives from :class:`EdgeDLError`.

The CLI prints an ``EdgeDLError`` as one line and exits non-zero; anything else is a bug
in edgedl and gets a traceback only with ``--debug``.
"""

from __future__ import annotations

from typing import Any


class EdgeDLError(Exception):
    """Base of every error edgedl raises on purpose. Its message is meant for the user."""

    exit_code = 1


class UsageError(EdgeDLError):
    """A command was asked for something it cannot do (unknown target, bad option combination)."""

    exit_code = 2


class ConfigError(EdgeDLError):
    """A configuration file or value is invalid; the message names the key."""


class DataError(EdgeDLError):
    """Calibration, validation or inference data is missing, malformed or not representative."""


class ModelError(EdgeDLError):
    """A source model cannot be read (missing, corrupt, unsupported format)."""


class ConversionError(EdgeDLError):
    """A model could not be converted to the requested target."""


class ValidationFailed(EdgeDLError):
    """A converted artifact did not meet its quality gate (e.g. ``--max-accuracy-drop``).

    ``result`` carries what was measured (for the converter: its ``ConvertResult``).
    """

    exit_code = 3

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class BundleError(EdgeDLError):
    """A bundle is missing, malformed, or its model file does not match its manifest."""


class RuntimeUnavailableError(EdgeDLError):
    """No installed inference runtime can run a bundle."""


class TelemetryError(EdgeDLError):
    """A telemetry message or connection is invalid."""


class ServingError(EdgeDLError):
    """A request to a served model failed; ``status`` is the HTTP status it maps to.

    The agent raises subclasses (queue full: 429, shutting down: 503, deadline: 504, bad
    input: 400, unknown model: 404, inference failure: 500); the Python client of the agent's
    API raises it with the status and message the agent answered.
    """

    status = 500
    kind = "error"  # how metrics count it: "bad_input", "queue_full", "timeout", ...

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class RolloutError(EdgeDLError):
    """A deployment, promotion or rollback cannot be done (one is already running, nothing to
    roll back to, a candidate that does not fit the live version's inputs)."""


class SignatureError(BundleError):
    """A bundle's signature is missing, made by a key that is not trusted, or does not match
    the manifest, or its model file no longer matches the signed manifest."""


class KeyFileError(EdgeDLError):
    """A signing key file is missing, unreadable, not an Ed25519 PEM key, or already exists."""


class FleetError(EdgeDLError):
    """A fleet operation cannot be done: an unknown model or version in the artifact store, a
    bad device selector or wave list, a collector that cannot be reached or refuses."""
