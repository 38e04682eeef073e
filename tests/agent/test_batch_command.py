"""``edgedl agent batch``: offline predictions for a file or a folder of inputs."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.serving_helpers import digit_images
from tests.conftest import EDGEDL, run_edgedl

from edgedl import runtime


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batch_predicts_an_npy_file_like_the_bundle_does(
    digits_bundle: Any, tmp_path: Path
) -> None:
    bundle = digits_bundle("tflite-int8")
    x = digit_images(70)
    np.save(tmp_path / "digits.npy", x)
    out = tmp_path / "preds.jsonl"
    result = run_edgedl("agent", "batch", "--model", bundle, "--input", tmp_path / "digits.npy",
                        "--output", out, "--batch-size", "16")  # fmt: skip
    assert result.code == 0, result.stderr
    assert "wrote 70 predictions from 1 file(s)" in result.stderr
    lines = read_lines(out)
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    assert [line["index"] for line in lines] == list(range(70))
    assert {line["source"] for line in lines} == {"digits.npy"}
    for line, row in zip(lines, expected, strict=True):
        np.testing.assert_allclose(line["outputs"]["output_0"], row, atol=1e-6)
        assert line["class"] == int(row.argmax())
        assert line["label"] == str(int(row.argmax()))
        assert 0 < line["confidence"] <= 1


def test_batch_reads_a_folder_of_npz_and_single_samples(digits_bundle: Any, tmp_path: Path) -> None:
    bundle = digits_bundle("onnx-fp32")
    folder = tmp_path / "inputs"
    folder.mkdir()
    x = digit_images(5)
    np.savez(folder / "a.npz", pixels=x[:3], y=np.arange(3))
    np.save(folder / "b.npy", x[3])  # one sample without a batch axis
    np.save(folder / "c.npy", x[4:5])
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "preds.jsonl"
    result = run_edgedl("agent", "batch", "--model", bundle, "--input", folder, "--output", out)
    assert result.code == 0, result.stderr
    lines = read_lines(out)
    assert [(line["source"], line["index"]) for line in lines] == [
        ("a.npz", 0), ("a.npz", 1), ("a.npz", 2), ("b.npy", 0), ("c.npy", 0),
    ]  # fmt: skip
    expected = runtime.load(bundle).run({"pixels": x})["output_0"]
    got = np.array([line["outputs"]["output_0"] for line in lines])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batch_reports_bad_input_in_one_line_and_writes_nothing(
    digits_bundle: Any, tmp_path: Path
) -> None:
    bundle = digits_bundle("tflite-int8")
    np.save(tmp_path / "wrong.npy", np.zeros((4, 9, 9, 1), np.float32))
    out = tmp_path / "preds.jsonl"
    result = run_edgedl("agent", "batch", "--model", bundle, "--input", tmp_path / "wrong.npy",
                        "--output", out)  # fmt: skip
    assert result.code != 0
    assert "expected shape [?, 8, 8, 1], got [4, 9, 9, 1]" in result.last_error_line
    assert "Traceback" not in result.stderr
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_edgedl("agent", "batch", "--model", bundle, "--input", empty, "--output", out)
    assert result.code != 0
    assert "holds no .npy or .npz files" in result.last_error_line


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux script for a TTY")
def test_batch_shows_progress_on_a_terminal_only(digits_bundle: Any, tmp_path: Path) -> None:
    bundle = digits_bundle("tflite-int8")
    np.save(tmp_path / "x.npy", digit_images(40))
    out = tmp_path / "preds.jsonl"
    command = shlex.join([EDGEDL, "agent", "batch", "--model", str(bundle), "--input",
                          str(tmp_path / "x.npy"), "--output", str(out), "--batch-size", "8"])  # fmt: skip
    on_tty = subprocess.run(
        ["script", "-qec", command, "/dev/null"], capture_output=True, text=True, timeout=120
    )
    assert on_tty.returncode == 0
    assert "predicting" in on_tty.stdout
    assert "40/40" in on_tty.stdout
    piped = run_edgedl("agent", "batch", "--model", bundle, "--input", tmp_path / "x.npy",
                       "--output", out)  # fmt: skip
    assert piped.code == 0
    assert "predicting" not in piped.stderr
