"""Calibration diagnostics: each fires on a crafted bad set, with its numbers, and not on real data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.conftest import run_edgedl

from edgedl.converters.data import Dataset, calibration_subset
from edgedl.converters.diagnostics import diagnose, value_summary
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


# --- the samples calibration uses ------------------------------------------------------


def test_calibration_subset_is_seeded_random_and_in_file_order(split: Any) -> None:
    train, _ = split
    names = [f"s{i}" for i in range(len(train))]
    labels = np.arange(len(train)) % 10
    ds = Dataset(x=train, y=labels, source="train.npz", sample_names=names)
    sub = calibration_subset(ds, 100)
    again = calibration_subset(ds, 100)
    assert len(sub) == 100 and sub.drawn_from == len(train) == sub.samples_in_data
    index = [int(n[1:]) for n in sub.sample_names or []]
    assert index == sorted(index)  # file order kept
    assert index[-1] > 100  # not the head of the file
    assert index == [int(n[1:]) for n in again.sample_names or []]  # reproducible
    np.testing.assert_array_equal(sub.x, train[index])
    np.testing.assert_array_equal(sub.y, labels[index])
    # A file with no more samples than asked for is used whole, as it is.
    assert calibration_subset(ds, len(train)) is ds
    assert calibration_subset(ds, len(train)).drawn_from is None


def test_blank_head_of_the_file_is_judged_on_the_samples_used(split: Any) -> None:
    """A file whose first N samples are blank, calibrated on N: the head would be all blank;
    the samples used hold the random share of blanks, and the finding counts those."""
    train, test = split
    x = train.copy()
    x[:300] = 0.0
    ds = _ds(x)
    used = calibration_subset(ds, 300)
    blank = int((np.ptp(used.x.reshape(300, -1), axis=1) == 0).sum())
    assert 30 < blank < 110  # about 300 * 300 / 1347 = 67, not 300
    (finding,) = diagnose(used, _ds(test))
    assert finding.check == "constant_samples"
    assert finding.numbers["constant"] == blank
    assert finding.numbers["samples"] == 300
    assert finding.numbers["samples_in_data"] == len(train)
    assert (
        f"{blank} of 300 calibration samples (drawn at random from the {len(train)} in the data"
        in (finding.message)
    )
    # 20 of 1347 blank, calibrated on 20: the head would be all blank, the draw is not.
    x = train.copy()
    x[:20] = 0.0
    checks = [f.check for f in diagnose(calibration_subset(_ds(x), 20), _ds(test))]
    assert checks == ["too_few_samples"]
    assert "constant_samples" in {f.check for f in diagnose(_ds(x[:20]), _ds(test))}


def _dense_onnx(path: Path) -> Path:
    """A small digits classifier in ONNX (64 pixels -> 10 scores), fixed random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (64, 10)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 64])
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w", "b"], ["y"], name="dense"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [w, b, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("samples", "checks"),
    [
        (1, ["too_few_samples"]),
        (50, ["constant_samples", "too_few_samples"]),  # about 11 of 50 blank
        (300, ["constant_samples"]),
    ],
)
def test_convert_diagnoses_and_reports_the_samples_it_calibrates_on(
    split: Any, tmp_path: Path, samples: int, checks: list[str]
) -> None:
    from edgedl.converters import ConvertOptions, convert

    train, test = split
    x = train.copy()
    x[:300] = 0.0  # a blank head of 300 samples
    np.savez(tmp_path / "cal.npz", x=x)
    np.savez(tmp_path / "val.npz", x=test)
    result = convert(
        _dense_onnx(tmp_path / "m.onnx"),
        ConvertOptions(
            target="onnx-int8",
            calibration=tmp_path / "cal.npz",
            validation=tmp_path / "val.npz",
            calibration_samples=samples,
            max_accuracy_drop=100,
            output=tmp_path / "out",
        ),
    )
    report = result.report
    used = calibration_subset(_ds(x), samples)
    assert report["calibration"]["samples"] == samples
    assert report["calibration"]["samples_in_data"] == len(train)
    assert report["calibration"]["sample_selection"].startswith("random")
    diagnostics = report["calibration_diagnostics"]
    assert diagnostics["samples"] == samples
    assert diagnostics["samples_in_data"] == len(train)
    findings = {f["check"]: f for f in diagnostics["findings"]}
    assert sorted(findings) == sorted(checks)
    if "too_few_samples" in findings:
        assert findings["too_few_samples"]["numbers"]["samples"] == samples
        assert f"only {samples} calibration samples" in findings["too_few_samples"]["message"]
    if "constant_samples" in findings:
        blank = int((np.ptp(used.x.reshape(samples, -1), axis=1) == 0).sum())
        assert findings["constant_samples"]["numbers"]["constant"] == blank < samples / 2
    assert diagnostics["calibration"] == value_summary(used.x)
    for f in diagnostics["findings"]:
        assert f["message"] in report["warnings"]


def test_convert_uses_a_small_file_whole(split: Any, tmp_path: Path) -> None:
    from edgedl.converters import ConvertOptions, convert

    train, _ = split
    np.savez(tmp_path / "cal.npz", x=train[:200])
    result = convert(
        _dense_onnx(tmp_path / "m.onnx"),
        ConvertOptions(
            target="onnx-int8",
            calibration=tmp_path / "cal.npz",
            max_accuracy_drop=100,
            output=tmp_path / "out",
        ),
    )
    calibration = result.report["calibration"]
    assert (calibration["samples"], calibration["samples_in_data"]) == (200, 200)
    assert calibration["sample_selection"] == "all"
    diagnostics = result.report["calibration_diagnostics"]
    assert diagnostics["findings"] == [] and diagnostics["validation"] is None
    # Validated on the whole calibration file, not only the samples calibration used.
    assert result.report["validation"]["samples"] == 200
