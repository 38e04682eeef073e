"""``--target auto``: build every candidate for the device, validate each, keep the fastest within the bound.

The candidates are the int8, fp16, dynamic and fp32 targets of the device's runtime family
(LiteRT or ONNX Runtime), and ``onnx-int8-u8u8`` too where this CPU is x86-64 without VNNI
(there ONNX Runtime's S8S8 kernels saturate, so ``onnx-int8`` measures far below its graph,
and U8U8 is the int8 model that keeps its accuracy); when ``onnx-int8`` exceeds the bound, mixed precision joins them:
``onnx-int8`` with the fewest of its most sensitive layers kept in float that bring it within
the bound, found by bisection over the order of their measured error (:mod:`.mixed_precision`). Each is converted and validated like a single target; then their
latencies are measured again, round-robin, so that a noisy neighbour slows all of them alike.
The drop a candidate is judged by is absolute, in percentage points (:func:`.validate.drop_pts`):
the accuracy drop when the validation data has labels, else the top-1 disagreement with the
source, and for an embedding model (no labels, no classes) 100 x (1 - mean cosine of its
embeddings to the source's), so a bound of 1 asks for a mean cosine of at least 0.99.

The no-regression guard: a reduced-precision candidate whose p50 latency is above the fp32
candidate's (by more than :data:`SLOWER_MARGIN`) is flagged with the reasons found in the
model (ops left in float, quantize/dequantize pairs) and never picked. When no candidate is
within the bound, the one with the smallest drop is still written, with the table, and
:class:`ValidationFailed` says so (exit 3): there is always a model to look at.
"""

from __future__ import annotations

import math
import platform
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgedl import runtime
from edgedl.bundle import pack_bundle, write_bundle
from edgedl.devices import get_device
from edgedl.errors import ConversionError, UsageError, ValidationFailed

from . import torch_source
from .convert import ConvertOptions, ConvertResult, convert, default_name
from .data import load_dataset, load_named_inputs, stored_named_samples
from .mixed_precision import search_float_layers
from .sources import detect_kind
from .targets import TARGETS
from .to_onnx import x86_without_vnni
from .validate import DROP_MEASURES, drop_measure, drop_pts, measure_latency

AUTO = "auto"
CANDIDATES = {
    "tflite": ["tflite-int8", "tflite-fp16", "tflite-dynamic", "tflite-fp32"],
    "onnx": ["onnx-int8", "onnx-fp16", "onnx-dynamic", "onnx-fp32"],
}
MIXED = "onnx-int8-mixed"  # onnx-int8 with its most sensitive layers kept in float
SLOWER_MARGIN = 0.10  # slower than fp32 by more than this share of its p50
LATENCY_ROUNDS = 5
LATENCY_RUNS = 40


def candidates_for(model: Path, device: str | None) -> list[str]:
    """The targets ``auto`` tries: the device's runtime family (a PyTorch source goes to LiteRT
    through litert-torch when the device runs LiteRT), else the source's natural one (ONNX for
    ONNX and PyTorch sources).

    ONNX Runtime on an x86-64 CPU without VNNI adds ``onnx-int8-u8u8`` after ``onnx-int8``:
    the candidates are validated on this CPU, where S8S8's int16 pair sums saturate.
    """
    if device is not None:
        family = TARGETS[get_device(device).default_target].family
    else:
        family = "onnx" if detect_kind(model) in ("onnx", "torch") else "tflite"
    names = list(CANDIDATES[family])
    if family == "onnx" and x86_without_vnni():
        names.insert(names.index("onnx-int8") + 1, "onnx-int8-u8u8")
    return names


def convert_auto(model: str | Path, options: ConvertOptions) -> ConvertResult:
    """Convert ``model`` to each candidate target and write the fastest within the bound.

    The written bundle's ``report.json`` holds the ranked table under ``auto``. Raises
    :class:`ValidationFailed` (with ``.result``) after writing the best candidate when none
    is within ``options.max_accuracy_drop``.
    """
    if options.validation is None and options.calibration is None:
        raise UsageError("--target auto needs --validation data to judge the candidates on")
    model_path = Path(model)
    name = options.name or default_name(model_path)
    output = (options.output or Path.cwd() / f"{name}-{options.version}-auto").resolve()
    if output.exists() and not options.force:
        raise UsageError(f"{output} already exists (use --force to replace it)")
    candidates = candidates_for(model_path, options.device)
    if TARGETS[candidates[0]].family == "tflite" and torch_source.is_torchscript(model_path):
        raise UsageError(torch_source.TORCHSCRIPT_TFLITE)
    rows: list[dict[str, Any]] = []
    results: dict[str, ConvertResult] = {}
    with tempfile.TemporaryDirectory(prefix="edgedl-auto-") as tmp:
        for target in candidates:
            if TARGETS[target].needs_calibration and options.calibration is None:
                rows.append({"target": target, "skipped": "needs --calibration"})
                continue
            try:
                results[target] = convert(
                    model,
                    replace(
                        options, target=target, output=Path(tmp) / target, force=False,
                        tar=False, max_accuracy_drop=math.inf,
                    ),
                )  # fmt: skip
            except ConversionError as exc:
                rows.append({"target": target, "skipped": str(exc)})
        if not results:
            raise ConversionError("--target auto: no candidate converted: " + _reasons(rows))
        try:
            mixed = _mixed_precision(model, options, results, Path(tmp))
        except ConversionError as exc:
            rows.append({"target": MIXED, "skipped": str(exc)})
            mixed = None
        if mixed is not None:
            results[MIXED] = mixed
        latencies = _latencies(results, options)
        rows = [_row(name, r, latencies[name]) for name, r in results.items()] + rows
        table = _rank(rows, options.max_accuracy_drop)
        chosen = next(r for r in table if "rank" in r and r.get("chosen"))
        best = results[chosen["target"]]
        assert best.bundle is not None
        report = dict(best.report)
        measure = drop_measure(best.report)
        report["auto"] = {
            "max_accuracy_drop_pts": options.max_accuracy_drop,
            "measure": measure,
            "judged_by": DROP_MEASURES[measure] if measure else None,
            "chosen": chosen["target"],
            "within_bound": chosen["within_bound"],
            "candidates": table,
        }
        report["max_accuracy_drop_pts"] = options.max_accuracy_drop
        report["passed"] = chosen["within_bound"]
        elsewhere = _measured_elsewhere(options.device)
        if elsewhere:
            report["warnings"] = [*report.get("warnings", []), elsewhere]
        bundle = write_bundle(
            output,
            best.bundle.path / best.bundle.manifest.model_file,
            best.bundle.manifest,
            report,
            overwrite=options.force,
        )
    tar_path = pack_bundle(bundle.path, bundle.path.with_suffix(".tar")) if options.tar else None
    result = ConvertResult(
        report=report,
        report_path=bundle.path / "report.json",
        bundle=bundle,
        tar_path=tar_path,
        warnings=list(report.get("warnings", [])),
    )
    if not chosen["within_bound"]:
        raise ValidationFailed(
            f"no candidate is within --max-accuracy-drop {options.max_accuracy_drop:g}; "
            f"wrote the best, {chosen['target']} (drop {chosen['drop_pts']:.2f} pts), to "
            f"{bundle.path}",
            result=result,
        )
    return result


def _mixed_precision(
    model: str | Path, options: ConvertOptions, results: dict[str, ConvertResult], tmp: Path
) -> ConvertResult | None:
    """onnx-int8 over the bound: keep the fewest of its worst layers in float.

    :func:`.mixed_precision.search_float_layers` finds the prefix of the sensitivity order
    (each probe printed as it ends); that prefix is then converted and validated like any
    candidate, with the search's probes in its report. When even every layer in float stays
    over the bound, that last try is the candidate, so the table shows how far it got.
    """
    int8 = results.get("onnx-int8")
    if int8 is None or drop_pts(int8.report) <= options.max_accuracy_drop:
        return None
    order = [r["node"] for r in (int8.report.get("calibration") or {}).get("layer_errors", [])]
    if not order:
        raise ConversionError("no quantized layer to keep in float")
    search = search_float_layers(model, options, order, log=options.log)
    chosen = order if search.float_layers is None else search.float_layers
    result = convert(
        model,
        replace(
            options, target="onnx-int8", float_nodes=tuple(chosen), force=False,
            tar=False, output=tmp / MIXED, max_accuracy_drop=math.inf,
        ),
    )  # fmt: skip
    result.report["mixed_search"] = search.to_dict()
    return result


def _measured_elsewhere(device: str | None) -> str | None:
    """A warning when the candidates' latencies, measured here, may rank differently on
    ``device``: another CPU, an accelerator, or execution providers this machine lacks."""
    if device is None:
        return None
    profile = get_device(device)
    here = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower())
    here = here or platform.machine().lower()
    missing = [p for p in profile.execution_providers if p not in _available_providers()]
    if profile.machine == here and not missing:
        return None
    what = f"on this {here} machine" + (f" without {', '.join(missing)}" if missing else "")
    return (
        f"the candidates' latencies were measured {what}, not on a {profile.name} "
        f"({profile.description}): the ranking by speed may differ there; time the chosen "
        "bundle on the device (edgedl loadtest) before relying on it"
    )


def _available_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except ImportError:
        return []


def _reasons(rows: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['target']}: {r['skipped']}" for r in rows)


def _latencies(
    results: dict[str, ConvertResult], options: ConvertOptions
) -> dict[str, dict[str, float]]:
    """p50/p95 per candidate: the median over rounds that time every candidate in turn."""
    data = options.validation or options.calibration
    assert data is not None
    first = next(iter(results.values()))
    assert first.bundle is not None
    specs = first.bundle.manifest.inputs
    if stored_named_samples(data, "validation") is not None:  # an array per input name
        feeds = load_named_inputs(data, specs, "validation").feeds(specs[0].name, 0, 32)
    else:
        feeds = {specs[0].name: load_dataset(data, specs[0].sample_shape, "validation").x[:32]}
    threads = first.report.get("threads")
    device = get_device(options.device) if options.device else None
    runners = {
        name: runtime.load(
            r.bundle.path if r.bundle else "",
            threads=threads,
            providers=device.execution_providers if device else None,
        )
        for name, r in results.items()
    }
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(LATENCY_ROUNDS):
        for name, runner in runners.items():
            stats = measure_latency(runner.run, feeds, runs=LATENCY_RUNS)
            rounds[name].append((stats.p50, stats.p95))
    return {
        name: {
            "p50": round(float(np.median([p50 for p50, _ in v])), 4),
            "p95": round(float(np.median([p95 for _, p95 in v])), 4),
        }
        for name, v in rounds.items()
    }


def _row(name: str, result: ConvertResult, latency: dict[str, float]) -> dict[str, Any]:
    r = result.report
    return {
        "target": name,
        "size_bytes": r["artifact_size_bytes"],
        "drop_pts": drop_pts(r),
        "accuracy": r.get("artifact_accuracy"),
        "top1_agreement": r.get("top1_agreement"),
        "cosine_mean": r.get("cosine_mean"),
        "cosine_min": r.get("cosine_min"),
        "sqnr_db": r.get("sqnr_db"),
        "latency_p50_ms": latency["p50"],
        "latency_p95_ms": latency["p95"],
        "float_ops": sum(int(o["count"]) for o in r.get("float_ops") or []),
        "inserted_nodes": _inserted_nodes(result),
        "float_layers": list((r.get("calibration") or {}).get("float_nodes") or []),
        **({"search": r["mixed_search"]} if "mixed_search" in r else {}),
    }


def _inserted_nodes(result: ConvertResult) -> dict[str, int]:
    """Conversion nodes in an ONNX artifact: Q/DQ pairs (int8), Casts (fp16). Empty for TFLite."""
    if result.bundle is None or not result.bundle.manifest.model_file.endswith(".onnx"):
        return {}
    import onnx

    graph = onnx.load(str(result.bundle.path / result.bundle.manifest.model_file)).graph
    counts = {
        "QuantizeLinear/DequantizeLinear": sum(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node
        ),
        "Cast": sum(n.op_type == "Cast" for n in graph.node),
        "DynamicQuantizeLinear": sum(n.op_type == "DynamicQuantizeLinear" for n in graph.node),
    }
    return {k: v for k, v in counts.items() if v}


def _rank(rows: list[dict[str, Any]], bound: float) -> list[dict[str, Any]]:
    """Flag slower-than-fp32 candidates, mark the ones within the bound, rank, choose."""
    built = [r for r in rows if "skipped" not in r]
    fp32 = next((r for r in built if r["target"].endswith("-fp32")), None)
    for r in built:
        r["within_bound"] = r["drop_pts"] <= bound
        r["slower_than_fp32"] = _slower(r, fp32)
    # Eligible: within the bound and not a regression; fastest first. Then the rest by drop.
    eligible = sorted(
        (r for r in built if r["within_bound"] and not r["slower_than_fp32"]),
        key=lambda r: r["latency_p50_ms"],
    )
    rest = sorted(  # at equal drops, a regression never ranks above what is not one
        (r for r in built if r not in eligible),
        key=lambda r: (r["drop_pts"], bool(r["slower_than_fp32"]), r["latency_p50_ms"]),
    )
    ranked = eligible + rest
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
        r["chosen"] = i == 1
    return ranked + [r for r in rows if "skipped" in r]


def _slower(row: dict[str, Any], fp32: dict[str, Any] | None) -> str | None:
    """Why a reduced-precision candidate is slower than fp32 here, or None when it is not."""
    if fp32 is None or row is fp32:
        return None
    if row["latency_p50_ms"] <= fp32["latency_p50_ms"] * (1.0 + SLOWER_MARGIN):
        return None
    ratio = row["latency_p50_ms"] / fp32["latency_p50_ms"]
    reasons = [f"p50 {ratio:.2f}x fp32's on this runtime"]
    if row["float_ops"]:
        reasons.append(f"{row['float_ops']} ops left in float")
    reasons += [f"{n} {op} nodes inserted" for op, n in row["inserted_nodes"].items()]
    if len(reasons) == 1:
        reasons.append("no float ops or inserted conversions: this runtime's kernels are slower")
    return "; ".join(reasons)
