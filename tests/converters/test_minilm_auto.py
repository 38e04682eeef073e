"""``edgedl convert --target auto`` on all-MiniLM-L6-v2 from its PyTorch factory: an embedding
model has no labels and no top-1, so each candidate's drop is 100 x (1 - mean cosine of its
embeddings to the PyTorch module's) and ``--max-accuracy-drop 1`` asks for a mean cosine of
at least 0.99. On the ONNX candidates static int8 (cosine about 0.93) is over that bound, the
mixed-precision search runs on the cosine, and a candidate within it is written; on the LiteRT
candidates (``--device rpi5``, through litert-torch) a bound nothing meets writes the best one,
shows the table and exits 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import run_edgedl
from tests.converters.test_minilm_tflite import FACTORY, text

from edgedl.bundle import Bundle

pytestmark = pytest.mark.slow  # converts MiniLM four or five times per case

__all__ = ["text"]  # the 32 + 32 tokenized sentences of test_minilm_tflite, as a fixture here


def _auto(report_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The written bundle's report and its ``auto`` candidates by target (built ones only)."""
    report: dict[str, Any] = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    rows = {r["target"]: r for r in report["auto"]["candidates"] if "skipped" not in r}
    return report, rows


def test_auto_keeps_a_candidate_within_the_cosine_bound(
    text: tuple[Path, Path], tmp_path: Path
) -> None:
    cal, val = text
    out = tmp_path / "auto"
    result = run_edgedl(
        "convert", FACTORY, "--target", "auto", "--max-accuracy-drop", "1",
        "--calibration", cal, "--validation", val, "--output", out,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    report, rows = _auto(out)
    auto = report["auto"]
    print({t: (r["drop_pts"], r["cosine_mean"], r["cosine_min"]) for t, r in rows.items()})
    assert auto["measure"] == "cosine"
    assert "mean cosine" in auto["judged_by"]
    for row in rows.values():  # the drop is the mean cosine, in points
        assert row["drop_pts"] == pytest.approx(100.0 * (1.0 - row["cosine_mean"]), abs=1e-3)
    assert not rows["onnx-int8"]["within_bound"]  # static int8: cosine about 0.93
    assert rows["onnx-int8"]["cosine_mean"] < 0.99
    # The mixed-precision search ran on the same drop, each probe printed.
    assert "mixed precision, probe 1: 1 of" in result.stderr
    assert rows["onnx-int8-mixed"]["search"]["probes"]
    # What was written is the chosen candidate, with a mean cosine of at least 0.99.
    chosen = auto["chosen"]
    assert rows[chosen]["within_bound"] and auto["within_bound"] and report["passed"]
    assert report["cosine_mean"] == rows[chosen]["cosine_mean"] >= 0.99
    assert len(report["embedding_outputs"]) == 1  # judged by that one output's cosine
    assert Bundle.open(out).manifest.target == chosen.removesuffix("-mixed")
    # The printed table shows the cosine each drop comes from.
    assert "mean cosine to the source ≥ 0.99" in result.stdout
    assert "cosine mean / worst" in result.stdout
    assert f"{rows[chosen]['cosine_mean']:.4f} / {rows[chosen]['cosine_min']:.4f}" in result.stdout


def test_auto_on_litert_with_a_bound_nothing_meets_writes_the_best_and_exits_3(
    text: tuple[Path, Path], tmp_path: Path
) -> None:
    cal, val = text
    out = tmp_path / "auto"
    result = run_edgedl(
        "convert", FACTORY, "--target", "auto", "--device", "rpi5", "--max-accuracy-drop", "-1",
        "--calibration", cal, "--validation", val, "--output", out,
    )  # fmt: skip
    assert result.code == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "no candidate is within --max-accuracy-drop -1" in result.last_error_line
    assert "--target auto: candidates, ranked (cosine drop bound -1 pts" in result.stdout
    assert "cosine mean / worst" in result.stdout
    report, rows = _auto(out)
    print({t: (r["drop_pts"], r["cosine_mean"], r["cosine_min"]) for t, r in rows.items()})
    assert set(rows) == {"tflite-int8", "tflite-fp16", "tflite-dynamic", "tflite-fp32"}
    assert report["passed"] is False and report["auto"]["within_bound"] is False
    chosen = report["auto"]["chosen"]  # the smallest drop: the highest mean cosine
    assert rows[chosen]["drop_pts"] == min(r["drop_pts"] for r in rows.values())
    assert report["cosine_mean"] == max(r["cosine_mean"] for r in rows.values()) >= 0.99
    assert rows["tflite-int8"]["cosine_mean"] < 0.99  # activations in int8: about 0.6
    assert Bundle.open(out).manifest.target == chosen
