"""Fixtures of the readiness tests: digits bundles good and bad, and a running agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess


@pytest.fixture(scope="module")
def wrong_range_bundle(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The digits CNN (trained on 0–1 pixels) as tflite-int8 calibrated on 0–255 pixels.

    Its int8 input scale spans 0–255, so every real input lands in a handful of levels:
    a bundle that converts without an error and is useless, the kind a gate must stop.
    """
    from edgedl.converters import ConvertOptions, convert

    out = tmp_path_factory.mktemp("wrong-range")
    train = np.load(digits.train)
    np.savez(out / "train255.npz", x=train["x"] * 255.0, y=train["y"])
    result = convert(
        digits.model,
        ConvertOptions(target="tflite-int8", calibration=out / "train255.npz",
                       validation=digits.test, labels=digits.labels, output=out / "bundle",
                       max_accuracy_drop=100.0),
    )  # fmt: skip
    assert result.bundle is not None
    return result.bundle.path


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A factory: ``serve(bundle, **model_settings)`` -> a ready ``edgedl agent serve``."""
    started: list[AgentProcess] = []
    out = tmp_path_factory.mktemp("agents")

    def start(bundle: Path, **settings: object) -> AgentProcess:
        config = out / f"agent{len(started)}.toml"
        extra = "".join(f"{k} = {v}\n" for k, v in settings.items())
        config.write_text(f'[[models]]\npath = "{bundle}"\nthreads = 1\n{extra}')
        import os

        agent = AgentProcess(["--config", str(config)], dict(os.environ),
                             out / f"agent{len(started)}.log")  # fmt: skip
        started.append(agent)
        agent.wait_ready()
        return agent

    yield start
    for agent in started:
        agent.stop()
