"""Shared fixtures: the digits sample trained once per session, and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

EDGEDL = str(Path(sys.executable).with_name("edgedl"))


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def last_error_line(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def run_edgedl(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> CliResult:
    """Run the installed ``edgedl`` console script, as a user would."""
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(
        [EDGEDL, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The digits CNN trained on scikit-learn's digits, with its train/test splits."""
    from edgedl.converters.samples import train_digits

    return train_digits(tmp_path_factory.mktemp("digits"), epochs=30)


@pytest.fixture(scope="session")
def digits_bundles(digits, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The digits model converted to every target: ``{target: ConvertResult}``."""
    from edgedl.converters import TARGETS, ConvertOptions, convert

    out = tmp_path_factory.mktemp("bundles")
    return {
        name: convert(
            digits.model,
            ConvertOptions(
                target=name,
                calibration=digits.train,
                validation=digits.test,
                labels=digits.labels,
                output=out / name,
            ),
        )
        for name in TARGETS
    }


@pytest.fixture(scope="session")
def digits_bundle(digits, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A factory: ``digits_bundle("tflite-int8", version="2")`` -> path of that bundle.

    Bundles are built once per (target, version) per test session from the one trained
    digits model, so agent and collector tests pay for TensorFlow only once.
    """
    from edgedl.converters import ConvertOptions, convert

    out = tmp_path_factory.mktemp("digits-bundles")
    built: dict[tuple[str, str], Path] = {}

    def make(target: str = "tflite-int8", version: str = "1") -> Path:
        key = (target, version)
        if key not in built:
            result = convert(
                digits.model,
                ConvertOptions(
                    target=target,
                    version=version,
                    calibration=digits.train,
                    validation=digits.test,
                    labels=digits.labels,
                    output=out / f"{target}-v{version}",
                ),
            )
            assert result.bundle is not None
            built[key] = result.bundle.path
        return built[key]

    return make
