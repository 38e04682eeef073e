"""How much of EfficientNet-Lite0's tflite-int8 loss comes from its worst few ops?

The float ``.tflite`` from litert-torch is quantized by ai-edge-quantizer (``static_wi8_ai8``)
as ``edgedl convert --target tflite-int8`` does: biases corrected for the weights' rounding
(except the ops kept in float), activation ranges holding every calibration sample. Each op
is then scored
by what keeping it alone in float (a ``NO_QUANTIZE`` recipe entry on its output tensor's
name) gains in SQNR of the logits against the float ``.tflite`` on calibration crops: the
direct measure of its sensitivity, one quantization per op. The worst k ops are then kept in
float together, and each model is judged on other crops by top-1 agreement with the PyTorch
model, and timed for one image at 1 and 4 threads in LiteRT (rounds that time every model in
turn).

Usage: python bench/litert_int8_mixed.py [--calibration-samples 64] [--validation-samples 64]
    [--keep 1,3,10,20,40] [--out bench/results/litert-int8-mixed.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from litert_int8_paths import model_and_crops, p50_ms, run_tflite

from edgedl.converters.bias_correction import BiasCorrection
from edgedl.converters.litert_ranges import minmax_ranges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--validation-samples", type=int, default=64)
    parser.add_argument("--keep", default="1,3,10,20,40", help="numbers of ops kept in float")
    parser.add_argument("--out", type=Path, default=Path("bench/results/litert-int8-mixed.json"))
    args = parser.parse_args()
    import litert_torch
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    model, cal, val, reference = model_and_crops(args.calibration_samples, args.validation_samples)
    data = {"serving_default": [{"input": c[None]} for c in cal]}
    with TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        work = Path(tmp)
        fp32 = work / "fp32.tflite"
        sample = {"input": torch.from_numpy(cal[:1])}
        litert_torch.convert(model, sample_kwargs=sample).export(str(fp32))
        ranges: Any = None
        samples = data["serving_default"]
        correction: BiasCorrection | None = None

        def quantize(keep: list[str]) -> bytes:
            # As tflite-int8 does: biases corrected for the weights' rounding (but not the
            # biases of the ops kept in float), ranges holding every calibration sample.
            nonlocal ranges
            nonlocal correction
            if correction is None:
                correction = BiasCorrection(fp32.read_bytes(), samples)
            source, _ = correction.apply(keep_float=keep)
            q = quantizer.Quantizer(source)
            q.load_quantization_recipe(recipe.static_wi8_ai8())
            for name in keep:
                q.add_static_config(
                    "^" + re.escape(name) + ";",
                    qtyping.TFLOperationName.ALL_SUPPORTED,
                    8,
                    8,
                    algorithm_key=AlgorithmName.NO_QUANTIZE,
                )
            if ranges is None:
                ranges = minmax_ranges(source, recipe.static_wi8_ai8(), samples)
            return bytes(q.quantize(ranges).quantized_model)

        def write(name: str, model_bytes: bytes) -> Path:
            path = work / f"{name}.tflite"
            path.write_bytes(model_bytes)
            return path

        probe = cal[: min(16, len(cal))]
        float_logits = run_tflite(fp32, probe)

        def sqnr(path: Path) -> float:
            err = float_logits - run_tflite(path, probe)
            return float(10 * np.log10(np.sum(float_logits**2) / np.sum(err**2)))

        int8 = quantize([])
        base = sqnr(write("int8", int8))
        details = Interpreter(model_path=str(fp32))
        names = {t["index"]: t["name"] for t in details.get_tensor_details()}
        gains = []
        for op in details._get_ops_details():
            if not len(op["outputs"]):
                continue
            name = names[op["outputs"][0]]
            one = quantize([name])
            if one != int8:
                gains.append((sqnr(write("one", one)) - base, op["op_name"], name))
        gains.sort(reverse=True)
        paths = {"tflite-fp32": fp32, "tflite-int8": work / "int8.tflite"}
        for k in (int(s) for s in args.keep.split(",")):
            paths[f"int8, worst {k} float"] = write(f"k{k}", quantize([g[2] for g in gains[:k]]))
        latency = {t: p50_ms(paths, rounds=3, threads=t) for t in (1, 4)}
        rows = []
        print(f"{len(gains)} quantized ops; best single-op gains (dB of logits SQNR):")
        for gain, kind, name in gains[:5]:
            print(f"  {gain:+.2f} {kind} {name[-70:]}")
        print("| model | top-1 agree | size (B) | p50 1 thr ms | p50 4 thr ms |")
        print("|---|--:|--:|--:|--:|")
        for name, path in paths.items():
            agree = float(np.mean(run_tflite(path, val).argmax(1) == reference.argmax(1)))
            row = {"model": name, "agree": agree, "size": path.stat().st_size}
            row |= {f"p50_{t}thr_ms": latency[t][name] for t in (1, 4)}
            rows.append(row)
            print(
                f"| {name} | {agree:.1%} | {row['size']:,} | {latency[1][name]:.1f} "
                f"| {latency[4][name]:.1f} |",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    gain_rows = [{"gain_db": g, "op": k, "tensor": n} for g, k, n in gains]
    args.out.write_text(json.dumps({"rows": rows, "op_gains": gain_rows}, indent=1))


if __name__ == "__main__":
    main()
