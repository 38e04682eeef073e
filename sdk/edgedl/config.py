"""Loading a component's TOML configuration with environment overrides.

The agent (``agent.toml``, ``EDGEDL_AGENT__…``) and the collector (``collector.toml``,
``EDGEDL_COLLECTOR__…``) read their settings the same way: the file, then environment
variables (``PREFIX`` + keys joined by ``__``, ``EDGEDL_AGENT__SERVER__PORT=8081``; a list
element by its index, ``EDGEDL_AGENT__MODELS__0__THREADS=2``; values that look like JSON are
parsed as JSON), then command-line overrides, validated by the component's pydantic model.
Every problem is a :class:`~edgedl.errors.ConfigError` naming the file, the key and, when it
came from the environment, the variable.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

Config = TypeVar("Config", bound=BaseModel)

# Keys whose values may carry a secret (a password, a URL with credentials, a token): a
# validation error names them but never echoes the value.
SECRET_KEYS = frozenset({"password", "mqtt", "admin_token", "token"})


def load_toml_config(
    model: type[Config],
    path: str | os.PathLike[str] | None,
    *,
    env_prefix: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read ``path`` (optional), apply ``env_prefix`` variables, then ``overrides``; validate.

    ``overrides`` maps dotted keys (``"server.port"``) to values, for command-line flags.
    """
    source = str(path) if path is not None else "configuration"
    data = _read_toml(Path(path)) if path is not None else {}
    from_env: dict[tuple[str, ...], str] = {}
    for name, value in sorted((env if env is not None else os.environ).items()):
        if not name.startswith(env_prefix):
            continue
        keys = tuple(k.lower() for k in name[len(env_prefix) :].split("__"))
        if not all(keys):
            raise ConfigError(f"{name}: empty key in environment override")
        _set_path(data, keys, _parse_env_value(value), name)
        from_env[keys] = name
    for dotted, value in (overrides or {}).items():
        _set_path(data, tuple(dotted.split(".")), value, dotted)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc) or "config"
        where = next(
            (f" (from {var})" for keys, var in from_env.items() if loc[: len(keys)] == keys), ""
        )
        secret = bool(loc) and loc[-1] in SECRET_KEYS
        got = (
            f" (got {err['input']!r})"
            if "input" in err and not isinstance(err["input"], dict) and not secret
            else ""
        )
        raise ConfigError(f"{source}: {key}: {err['msg']}{got}{where}") from exc


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc


def _parse_env_value(value: str) -> Any:
    text = value.strip()
    if text[:1] in "[{" or text in ("true", "false"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def _set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any, origin: str) -> None:
    node: Any = data
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"{origin}: {'.'.join(keys[:i])} has {len(node)} entries, no index {key!r}"
                )
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[:i])} is not a table")
        if last:
            node[key] = value
        elif keys[i + 1].isdigit():
            node = node.setdefault(key, [])
        else:
            node = node.setdefault(key, {})
