"""Calibration diagnostics: each fires on a crafted bad set, with its numbers, and not on real data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import run_edgedl

from edgedl.converters.data import Dataset
from edgedl.converters.diagnostics import diagnose
from edgedl.converters.samples import digits_split


def _ds(x: np.ndarray) -> Dataset:
    return Dataset(x=np.asarray(x, np.float32), y=None, source="crafted")


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    """Real digits: calibration (train) and validation (test), both scaled to [0, 1]."""
    x_train, _, x_test, _ = digits_split(0)
    return x_train, x_test


def test_real_calibration_and_validation_data_raise_nothing(split: Any) -> None:
    train, test = split
    assert diagnose(_ds(train), _ds(test)) == []
    assert diagnose(_ds(train), None) == []
    # Other random subsets of the same data are not "scaled differently" either.
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(train))
        assert diagnose(_ds(train[order[:300]]), _ds(train[order[300:500]])) == []


def test_small_draws_of_the_same_photos_are_not_scaled_differently() -> None:
    """16 and 8 crops of the same photographs: their means differ by chance (0.4 std), which
    the standard error of so few samples explains; the same draws offset by half their range
    are flagged."""
    pytest.importorskip("skimage", reason="in the dev extra")
    from edgedl.converters.efficientnet_lite0 import photo_crops

    cal, val = photo_crops(16, seed=0), photo_crops(8, seed=1)
    assert [f.check for f in diagnose(_ds(cal), _ds(val))] == ["too_few_samples"]
    findings = {f.check: f for f in diagnose(_ds(cal + 1.0), _ds(val))}
    assert findings["range_mismatch"].numbers["mean_shift_z"] > 3


def _blank(train: np.ndarray) -> np.ndarray:
    x = train.copy()
    x[:200] = 0.0
    return x


BAD_SETS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, dict[str, Any]]] = {
    # name: (make the calibration set from the real one, the check, numbers it reports)
    "0-255 against 0-1": (lambda t: t * 255, "range_mismatch", {"span_ratio": 255}),
    "standardised against 0-1": (
        lambda t: (t - t.mean()) / t.std(),
        "range_mismatch",
        {"span_ratio": 2.66},
    ),
    "[-1, 1] against [0, 1]": (lambda t: t * 2 - 1, "range_mismatch", {"span_ratio": 2}),
    "offset by 0.2": (lambda t: t + 0.2, "range_mismatch", {"span_ratio": 1}),
    "50 samples": (lambda t: t[:50], "too_few_samples", {"samples": 50}),
    "200 blank images": (_blank, "constant_samples", {"constant": 200}),
    "one image repeated": (
        lambda t: np.repeat(t[:1], 300, axis=0),
        "constant_samples",
        {"distinct": 1},
    ),
    "uniform noise": (lambda t: np.random.default_rng(0).random(t.shape), "looks_random", {}),
    "Gaussian noise": (
        lambda t: np.random.default_rng(1).normal(0.3, 0.37, t.shape),
        "looks_random",
        {},
    ),
}


@pytest.mark.parametrize("case", list(BAD_SETS))
def test_each_bad_calibration_set_is_named_with_its_numbers(split: Any, case: str) -> None:
    train, test = split
    make, check, numbers = BAD_SETS[case]
    findings = {f.check: f for f in diagnose(_ds(make(train)), _ds(test))}
    assert check in findings, case
    finding = findings[check]
    for key, value in numbers.items():
        assert finding.numbers[key] == pytest.approx(value, rel=0.01)
    if check == "range_mismatch":
        # Both sides' ranges are in the message, so the user sees which one is off.
        cal = finding.numbers["calibration"]
        assert f"[{cal['min']:g}, {cal['max']:g}]" in finding.message
        assert "validation [0, 1]" in finding.message
    # A noise-only finding needs no validation data to fire.
    if check == "looks_random":
        assert "random noise" in finding.message
        assert [f.check for f in diagnose(_ds(make(train)), None)] == ["looks_random"]


def test_real_tabular_data_does_not_look_random() -> None:
    from sklearn.datasets import load_breast_cancer, load_iris, load_wine

    for load in (load_wine, load_iris, load_breast_cancer):
        x = load().data
        assert diagnose(_ds(x), None) == []
        assert diagnose(_ds((x - x.mean(0)) / x.std(0)), None) == []


def test_good_calibration_leaves_the_report_clean(torch_bundles: Any) -> None:
    diagnostics = torch_bundles["digits-int8"].report["calibration_diagnostics"]
    assert diagnostics["findings"] == []
    assert diagnostics["calibration"]["min"] == 0 and diagnostics["calibration"]["max"] == 1
    assert diagnostics["validation"]["max"] == 1


@pytest.mark.slow
def test_convert_warns_on_the_terminal_and_in_the_report(torch_digits: Any, tmp_path: Path) -> None:
    train = np.load(torch_digits.train)
    np.savez(tmp_path / "raw.npz", x=train["x"] * 255, y=train["y"])  # forgot to scale
    out = tmp_path / "bundle"
    result = run_edgedl(
        "convert", torch_digits.factory, "--state-dict", torch_digits.state_dict,
        "--target", "onnx-int8", "--calibration", tmp_path / "raw.npz",
        "--validation", torch_digits.test, "--output", out, "--max-accuracy-drop", "100",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    terminal = " ".join(result.stdout.split())
    assert "warning: calibration and validation data are scaled differently" in terminal
    assert "calibration values [0, 255]" in terminal
    report = json.loads((out / "report.json").read_text())
    (finding,) = report["calibration_diagnostics"]["findings"]
    assert finding["check"] == "range_mismatch"
    assert finding["numbers"]["span_ratio"] == 255
    assert finding["message"] in report["warnings"]
    # What the warning is about: int8 ranges set on 0-255 data ruin the 0-1 model.
    assert report["accuracy_drop_pts"] > 10
