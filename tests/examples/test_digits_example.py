"""The digits example's commands, as its README shows them (so the docs cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import run_edgedl

from edgedl.bundle import Bundle
from edgedl.converters import TARGETS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_trains_converts_every_target_and_prints_the_table(tmp_path):
    out = tmp_path / "digits"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples/digits/demo.py"), "--out", str(out),
         "--epochs", "10"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Targets compared" in proc.stdout
    for target in TARGETS:
        assert target in proc.stdout
        Bundle.open(out / "bundles" / target)
    # The by-hand command from examples/digits/README.md, on the files the demo wrote.
    result = run_edgedl(
        "convert", out / "digits.keras", "--target", "tflite-int8",
        "--calibration", out / "train.npz", "--validation", out / "test.npz",
        "--labels", out / "labels.txt", "--output", out / "int8", "--force",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert Bundle.open(out / "int8").manifest.labels == [str(i) for i in range(10)]
