"""Compare the two int8 routes from PyTorch to TFLite on EfficientNet-Lite0.

- ai-edge-quantizer on litert-torch's float ``.tflite`` (``static_wi8_ai8``): with the
  activation ranges of its own ``calibrate`` (a moving average of each sample's range) or
  with each tensor's minimum and maximum over all the data (``edgedl.converters.
  litert_ranges``), each without and with bias correction of the weights' rounding
  (``edgedl.converters.bias_correction``). Data ranges with bias correction is what
  ``edgedl convert --target tflite-int8`` does for a PyTorch source. int8 weights alone
  (float activations, ``weight_only_wi8_afp32``), without and with bias correction, show how
  much of the loss the weights carry; int16 activations with int8 weights (``static_wi8_ai16``,
  data ranges, bias-corrected) show what 8 more activation bits buy and cost.
- litert-torch's PT2E quantization (``PT2EQuantizer``, symmetric per-channel int8 weights,
  histogram-observed int8 activations), calibrated in PyTorch, then converted.

Both are calibrated on the same photo crops and judged on other crops against the PyTorch
model: top-1 agreement (on every crop, and on the crops float is confident on: top-1 probability
at least 0.5), SQNR of the logits, the QUANTIZE/DEQUANTIZE ops left in the graph,
and p50 latency of one image at 1 thread in LiteRT (rounds that time every model in turn).
A second table splits agreement by float's margin (the gap between its top two logits), with
the spread of each route's error on that gap: the flips sit on the near-ties.

Usage: python bench/litert_int8_paths.py [--calibration-samples 100] [--validation-samples 100]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np

from edgedl.converters.bias_correction import correct_biases
from edgedl.converters.efficientnet_lite0 import make_model, photo_crops
from edgedl.converters.litert_ranges import minmax_ranges


def run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner()
    spec = runner.get_input_details()["input"]
    out_spec = runner.get_output_details()["logits"]
    outputs = []
    for sample in x:
        feed = sample[None]
        if spec["dtype"] != np.float32:
            scale, zero = spec["quantization"]
            bounds = np.iinfo(spec["dtype"])
            feed = np.clip(np.round(feed / scale) + zero, bounds.min, bounds.max)
            feed = feed.astype(spec["dtype"])
        out = runner(input=feed)["logits"].astype(np.float32)
        if out_spec["dtype"] != np.float32:
            scale, zero = out_spec["quantization"]
            out = (out - zero) * scale
        outputs.append(out)
    return np.concatenate(outputs)


def p50_ms(
    paths: dict[str, Path], rounds: int = 5, runs: int = 20, threads: int = 1
) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    interpreters = {}
    for name, path in paths.items():
        interpreters[name] = Interpreter(model_path=str(path), num_threads=threads)
        interpreters[name].allocate_tensors()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, it in interpreters.items():
            for _ in range(runs):
                start = time.perf_counter()
                it.invoke()
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(float(np.median(v)), 2) for name, v in times.items()}


def model_and_crops(n_cal: int, n_val: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """EfficientNet-Lite0 with a ``logits`` output named for the TFLite signature, calibration
    and validation crops, and the model's logits on the validation crops."""
    import torch

    class Named(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input: Any) -> dict[str, Any]:
            return {"logits": self.inner(input)}

    model = Named(make_model()).eval()
    cal = photo_crops(n_cal, seed=0)
    val = photo_crops(n_val, seed=1)
    with torch.no_grad():
        reference = model(input=torch.from_numpy(val))["logits"].numpy()
    return model, cal, val, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-samples", type=int, default=100)
    parser.add_argument("--validation-samples", type=int, default=100)
    args = parser.parse_args()
    import litert_torch
    import torch
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, cal, val, reference = model_and_crops(args.calibration_samples, args.validation_samples)
    sample = {"input": torch.from_numpy(cal[:1])}
    seconds: dict[str, float] = {}
    with TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
        names = ("fp32", "int8", "int8+bc", "int8 data ranges", "int8 data ranges+bc",
                 "a16w8 data ranges+bc", "w8", "w8+bc", "pt2e")  # fmt: skip
        paths = {name: Path(tmp) / f"{name}.tflite" for name in names}
        start = time.perf_counter()
        litert_torch.convert(model, sample_kwargs=sample).export(str(paths["fp32"]))
        seconds["fp32"] = time.perf_counter() - start
        data = [{"input": c[None]} for c in cal]
        for name in names[1:-1]:
            start = time.perf_counter()
            source = paths["fp32"].read_bytes()
            if name.endswith("+bc"):
                source, _ = correct_biases(source, data)
            q = quantizer.Quantizer(source)
            static = name.startswith(("int8", "a16w8"))
            chosen = recipe.weight_only_wi8_afp32()
            if static:
                chosen = (
                    recipe.static_wi8_ai16() if name.startswith("a16") else recipe.static_wi8_ai8()
                )
            q.load_quantization_recipe(chosen)
            ranges = None
            if "data ranges" in name:
                ranges = minmax_ranges(source, chosen, data)
            elif static:
                ranges = q.calibrate({"serving_default": data})
            paths[name].write_bytes(bytes(q.quantize(ranges).quantized_model))
            seconds[name] = seconds["fp32"] + time.perf_counter() - start
        start = time.perf_counter()
        pt2e = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(model, (), sample).module(), pt2e)
        with torch.no_grad():
            for c in cal:
                prepared(input=torch.from_numpy(c[None]))
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(
            converted, sample_kwargs=sample, quant_config=QuantConfig(pt2e_quantizer=pt2e)
        ).export(str(paths["pt2e"]))
        seconds["pt2e"] = time.perf_counter() - start
        latency = p50_ms(paths)
        ranked = np.sort(reference, axis=1)
        margin = ranked[:, -1] - ranked[:, -2]
        bands = [(0.0, 0.25), (0.25, 1.0), (1.0, np.inf)]
        margin_rows = []
        shifted = np.exp(reference - reference.max(axis=1, keepdims=True))
        confident = (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1) >= 0.5
        print(f"{confident.sum()} of {len(val)} crops have a float top-1 probability >= 0.5")
        print(
            "| route | top-1 agree | on confident crops | SQNR dB | Q/DQ ops | size (B) "
            "| p50 1 thr ms | convert s |"
        )
        print("|---|--:|--:|--:|--:|--:|--:|--:|")
        top, second = reference.argmax(1), np.argsort(reference, axis=1)[:, -2]
        rows = np.arange(len(reference))
        for name, path in paths.items():
            out = run_tflite(path, val)
            same = out.argmax(1) == top
            gap_error = (out[rows, top] - out[rows, second]) - margin
            margin_rows.append(
                (name, [float(np.mean(same[(margin >= lo) & (margin < hi)])) for lo, hi in bands],
                 float(gap_error.std()))
            )  # fmt: skip
            agree = float(np.mean(same))
            sure = float(np.mean(same[confident]))
            sqnr = 10 * np.log10(np.sum(reference**2) / np.sum((reference - out) ** 2))
            it = Interpreter(model_path=str(path))
            ops = Counter(op["op_name"] for op in it._get_ops_details())
            qdq = ops["QUANTIZE"] + ops["DEQUANTIZE"]
            print(
                f"| {name} | {agree:.0%} | {sure:.0%} | {sqnr:.1f} | {qdq} | {path.stat().st_size:,} "
                f"| {latency[name]:.1f} | {seconds[name]:.0f} |",
                flush=True,
            )
        counts = [int(np.sum((margin >= lo) & (margin < hi))) for lo, hi in bands]
        print("\n| route | " + " | ".join(
            f"agree, margin {lo:g}-{hi:g} ({n} crops)" for (lo, hi), n in zip(bands, counts, strict=True)
        ) + " | error std on the gap |")  # fmt: skip
        print("|---|" + "--:|" * (len(bands) + 1))
        for name, agree_by_band, spread in margin_rows:
            cells = " | ".join(f"{a:.0%}" for a in agree_by_band)
            print(f"| {name} | {cells} | {spread:.3f} |")


if __name__ == "__main__":
    main()
