"""The keyword-spotting CNN's int8 targets on this CPU and on an emulated x86 CPU without VNNI.

Is the accuracy onnx-int8 loses on some x86 machines the model's quantization (calibration,
an op) or ONNX Runtime's S8S8 kernels saturating (VPMADDUBSW's int16 pair sums, used on x86
CPUs with AVX2 but no VNNI)? The keyword CNN (examples/keyword_spotting/prepare.py
--size small --epochs 15 --stream-words 200) is converted to tflite-fp32, tflite-int8,
onnx-fp32, onnx-int8 and onnx-int8-u8u8, and each ONNX file's accuracy on val and on the
held-out stream's windows is measured three ways:

  kernels   ONNX Runtime as a device runs it (graph optimisation on: int8 kernels) here;
  graph     the same QDQ graph with graph optimisation off (DequantizeLinear, then float ops:
            what the quantized model says, on any CPU);
  no-VNNI   the kernels again, in QEMU's user-mode emulator with ``-cpu Haswell`` (AVX2, no
            AVX-512, no VNNI), when ``qemu-x86_64-static`` or ``qemu-x86_64`` is installed
            (Debian: qemu-user-static). Slow (emulated), so the windows go in one batch.

The per-layer SQNR of the conversion report (edgedl.converters.sensitivity) is shown for the
two ONNX int8 targets: it runs the QDQ graph, so it describes the quantization, not the kernels.

Usage: python bench/onnx_int8_cpus.py [--data DIR] [--out bench/results/onnx_int8_cpus.json]
(--data: a prepare.py output directory to reuse.) Prints markdown tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8", "onnx-int8-u8u8")
QEMU_CPU = "Haswell"


def score(data: Path, files: list[str], optimise: bool = True) -> dict[str, dict[str, float]]:
    """Accuracy (percent) of ONNX files on ``data``/val.npz and stream.npz (ONNX Runtime only)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    out = {}
    for file in files:
        session = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        row = {}
        for part in ("val", "stream"):
            d = np.load(data / f"{part}.npz")
            scores = session.run(None, {name: d["x"]})[0]
            row[part] = round(float(np.mean(scores.argmax(axis=1) == d["y"]) * 100), 2)
        out[file] = row
    return out


def under_qemu(data: Path, files: list[str]) -> dict[str, dict[str, float]] | None:
    """:func:`score` run by this script in QEMU's emulated AVX2-only CPU, or None without QEMU."""
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        return None
    cmd = [qemu, "-cpu", QEMU_CPU, sys.executable, __file__, "--score", str(data), *files]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, dict[str, float]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def prepare(work: Path) -> Path:
    out = work / "kws"
    subprocess.run([sys.executable, str(ROOT / "examples/keyword_spotting/prepare.py"), "--out",
                    str(out), "--size", "small", "--epochs", "15", "--stream-words", "200"],
                   check=True)  # fmt: skip
    return out


def run(data: Path, work: Path) -> list[dict[str, Any]]:
    from edgedl import runtime
    from edgedl.bundle import Bundle
    from edgedl.converters import ConvertOptions, convert

    rows = []
    for target in TARGETS:
        bundle = work / target
        result = convert(data / "keywords.keras", ConvertOptions(
            target=target, output=bundle, force=True, calibration=data / "train.npz",
            validation=data / "val.npz", calibration_samples=400, max_accuracy_drop=100.0))  # fmt: skip
        runner = runtime.load(bundle, threads=1)
        row: dict[str, Any] = {"target": target, "file": str(Bundle.open(bundle).model_path)}
        for part in ("val", "stream"):
            d = np.load(data / f"{part}.npz")
            row[f"{part}_kernels"] = round(
                float(np.mean(runner.predict(d["x"]).argmax(axis=1) == d["y"]) * 100), 2
            )
        row["layers"] = (result.report.get("calibration") or {}).get("layer_errors")
        row["warnings"] = result.report.get("warnings", [])
        rows.append(row)
    onnx = [r for r in rows if r["target"].startswith("onnx")]
    graph = score(data, [r["file"] for r in onnx], optimise=False)
    emulated = under_qemu(data, [r["file"] for r in onnx])
    for r in onnx:
        for part in ("val", "stream"):
            r[f"{part}_graph"] = graph[r["file"]][part]
            r[f"{part}_no_vnni"] = emulated[r["file"]][part] if emulated else None
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    def f(v: object) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = ["| target | val: kernels here | graph | kernels, no VNNI | stream: kernels here "
             "| graph | kernels, no VNNI |", "|---|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['target']} | {f(r['val_kernels'])} | {f(r.get('val_graph'))} "
                     f"| {f(r.get('val_no_vnni'))} | {f(r['stream_kernels'])} "
                     f"| {f(r.get('stream_graph'))} | {f(r.get('stream_no_vnni'))} |")  # fmt: skip
    lines += ["", "| target | layer | SQNR dB | loss dB |", "|---|---|--:|--:|"]
    for r in rows:
        for layer in r["layers"] or []:
            lines.append(f"| {r['target']} | {layer['node']} | {layer['sqnr_db']} "
                         f"| {layer['loss_db']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/onnx_int8_cpus.json")
    parser.add_argument("--score", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:  # the emulated run: ONNX Runtime and NumPy only
        print(json.dumps(score(Path(args.score[0]), args.score[1:])))
        return
    from convert import machine

    with tempfile.TemporaryDirectory(prefix="edgedl-int8-cpus-") as tmp:
        data = args.data or prepare(Path(tmp))
        rows = run(data, Path(tmp))
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "qemu_cpu": QEMU_CPU, "rows": rows},
                                   indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
