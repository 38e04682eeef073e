"""``convert``: source model → artifact → validated bundle, written atomically."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgedl import runtime
from edgedl.bundle import (
    MANIFEST_FILE,
    Bundle,
    Manifest,
    pack_bundle,
    sha256_file,
    write_bundle,
)
from edgedl.calibration import fit_calibration
from edgedl.devices import DeviceProfile, get_device
from edgedl.errors import DataError, UsageError, ValidationFailed
from edgedl.profile import Profile, batch_statistics

from .artifact import describe
from .data import (
    CALIBRATION_SEED,
    Dataset,
    calibration_subset,
    load_dataset,
    load_named_inputs,
    stored_named_samples,
    stored_sample_shape,
)
from .diagnostics import diagnose, value_summary
from .sources import KIND_NAMES, SourceKind, SourceModel, detect_kind, load_source
from .targets import BuildContext, Target, get_target
from .validate import measure_latency, validate

_TOOLS = (
    "edgedl",
    "tensorflow",
    "keras",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "onnxconverter-common",
    "ai-edge-litert",
    "torch",
    "onnxscript",
    "litert-torch",
    "ai-edge-quantizer",
)
REPORT_SCHEMA_VERSION = 1


@dataclass
class ConvertOptions:
    """Everything ``edgedl convert`` takes besides the model path."""

    target: str | None = None
    device: str | None = None
    calibration: Path | None = None
    validation: Path | None = None
    name: str | None = None
    version: str = "1"
    output: Path | None = None
    io: str | None = None
    labels: Path | None = None
    state_dict: Path | None = None
    float_nodes: tuple[str, ...] = ()
    max_accuracy_drop: float = 1.0
    calibration_samples: int = 500
    threads: int | None = None
    force: bool = False
    tar: bool = False
    readiness: Path | None = None
    show_progress: bool = False
    log: Callable[[str], None] | None = None  # progress lines of a long search (--target auto)


@dataclass
class ConvertResult:
    """A written bundle (or, when the quality gate failed, only its report)."""

    report: dict[str, Any]
    report_path: Path
    bundle: Bundle | None = None
    tar_path: Path | None = None
    warnings: list[str] = field(default_factory=list)


class _Progress:
    """Progress bars on a terminal; nothing at all otherwise."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    @contextmanager
    def step(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        if self._progress is None:
            yield lambda n: None
            return
        with self._progress:
            task = self._progress.add_task(description, total=total)
            yield lambda n: self._progress.advance(task, n)


def _tool_versions() -> dict[str, str]:
    versions = {}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            continue
    return versions


def default_name(model: Path) -> str:
    """The model's name when ``--name`` is not given: its file name, or a factory's module."""
    if ":" in model.name:  # package.module:factory
        stem = model.name.split(":")[0].rsplit(".", 1)[-1]
    else:
        stem = model.name if model.is_dir() else model.stem
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-._") or "model"


def _resolve_target(options: ConvertOptions) -> tuple[Target, DeviceProfile | None, str]:
    profile = get_device(options.device) if options.device else None
    name = options.target or (profile.default_target if profile else None)
    if name is None:
        raise UsageError("give --target TARGET or --device DEVICE (see 'edgedl targets')")
    target = get_target(name)
    io = options.io or (profile.io_dtype if profile and target.name == "tflite-int8" else None)
    if io is not None and target.name != "tflite-int8":
        raise UsageError(f"--io applies to tflite-int8 only, not {target.name}")
    if io not in (None, "int8", "uint8"):
        raise UsageError(f"--io must be int8 or uint8, not {io!r}")
    return target, profile, io or "int8"


def _read_labels(path: Path) -> list[str]:
    try:
        labels = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read labels file {path}: {exc}") from exc
    if not labels:
        raise DataError(f"labels file {path} is empty")
    return labels


def _load_data(
    source: SourceModel, options: ConvertOptions, target: Target
) -> tuple[Dataset | None, Dataset | None, list[str]]:
    warnings: list[str] = []
    named = named_inputs(source)
    # litert-torch takes a PyTorch module's named inputs; the TensorFlow converter does not.
    tflite_named = source.kind == "torch"
    if (
        named
        and target.family != "onnx"
        and not tflite_named
        and (options.calibration or options.validation)
    ):
        raise UsageError(
            f"{target.name} takes a model with one float input; this one takes "
            f"{', '.join(f'{s.name} ({s.dtype})' for s in source.inputs)}: use an onnx-* target"
        )
    sample_shape = source.inputs[0].sample_shape if source.inputs else ()

    def load(path: Path, role: str) -> Dataset:
        if named:
            return load_named_inputs(path, source.inputs, role)
        return load_dataset(path, sample_shape, role)

    calibration = None
    if target.needs_calibration and options.calibration is None:
        raise UsageError(
            f"{target.name} needs --calibration DATA: a few hundred real, representative inputs "
            "(random data ruins int8 accuracy)"
        )
    if options.calibration is not None:
        calibration = load(options.calibration, "calibration")
    validation = None
    if options.validation is not None:
        validation = load(options.validation, "validation")
    elif calibration is not None:
        validation = calibration
        warnings.append(
            "no --validation data: validated on the calibration data, which flatters the result"
        )
    else:
        warnings.append("no --validation data: accuracy and output error were not measured")
    return calibration, validation, warnings


def named_inputs(source: SourceModel) -> bool:
    """Whether the model's data comes as one array per input name (several or integer inputs)."""
    return len(source.inputs) != 1 or np.dtype(source.inputs[0].dtype).kind != "f"


def convert(model: str | Path, options: ConvertOptions) -> ConvertResult:
    """Convert ``model`` as ``options`` say and write the bundle; return its report.

    Raises :class:`~edgedl.errors.EdgeDLError` subclasses for every user mistake, and
    :class:`~edgedl.errors.ValidationFailed` (with ``.result``) when the accuracy drop
    exceeds ``options.max_accuracy_drop``: then only the report is written, beside where
    the bundle would have gone, so a failed artifact never looks deployable.
    """
    started = time.perf_counter()
    model_path = Path(model)
    target, device, io_dtype = _resolve_target(options)
    kind = detect_kind(model_path)
    _check_source_fits(kind, model_path, target, options)
    name = options.name or default_name(model_path)
    output = (options.output or Path.cwd() / f"{name}-{options.version}-{target.name}").resolve()
    if output.exists() and not options.force:
        raise UsageError(f"{output} already exists (use --force to replace it)")
    threads = (
        options.threads if options.threads is not None else (device.threads if device else None)
    )
    progress = _Progress(options.show_progress)

    with tempfile.TemporaryDirectory(prefix="edgedl-convert-") as tmp:
        workdir = Path(tmp)
        source, calibration, validation, warnings = load_inputs(
            model_path, options, target, workdir
        )
        # Diagnose the samples calibration uses; validation data the user gave, not the
        # calibration file standing in for it.
        diagnostics = (
            _diagnose(calibration, validation if options.validation is not None else None)
            if target.needs_calibration and not named_inputs(source)
            else None
        )
        if diagnostics:
            warnings += [f["message"] for f in diagnostics["findings"]]
        n_cal = min(len(calibration), options.calibration_samples) if calibration else 0
        with progress.step("calibrating", n_cal) as advance:
            ctx = BuildContext(
                source=source,
                calibration=calibration,
                workdir=workdir,
                io_dtype=io_dtype,
                calibration_samples=options.calibration_samples,
                advance=advance,
                float_nodes=options.float_nodes,
            )
            built = target.build(ctx)
        warnings += built.warnings
        info = describe(built.model_path, target.family)
        labels = (
            _read_labels(options.labels)
            if options.labels
            else (
                (validation.class_names if validation else None)
                or (calibration.class_names if calibration else None)
            )
        )
        model_file = f"model{built.model_path.suffix}"
        manifest = Manifest(
            name=name,
            version=options.version,
            target=target.name,
            runtime=target.runtime,
            model_file=model_file,
            sha256=sha256_file(built.model_path),
            size_bytes=built.model_path.stat().st_size,
            inputs=info.inputs,
            outputs=info.outputs,
            labels=labels,
            device=device.name if device else None,
        )
        # Validate through the agent's own loader, on the bundle as it will be shipped.
        candidate = workdir / "candidate"
        candidate.mkdir()
        shutil.copyfile(built.model_path, candidate / model_file)
        (candidate / MANIFEST_FILE).write_text(manifest.model_dump_json(), encoding="utf-8")
        runner = runtime.load(
            candidate,
            threads=threads,
            providers=device.execution_providers if device else None,
        )
        report = _base_report(
            manifest, target, source, device, threads, _used_samples(built.calibration, calibration)
        )
        report["calibration_diagnostics"] = diagnostics
        if built.path is not None:
            report["path"] = built.path
        warnings[:0] = source.warnings
        report["warnings"] = warnings
        if validation is not None:
            with progress.step("validating", len(validation)) as advance:
                checked = validate(source, runner, validation, advance=advance)
            report.update(checked.report)
            warnings += checked.warnings
            reference = Profile.from_reference(
                validation.feeds(source.inputs[0].name), checked.artifact_outputs
            )
            manifest.profile = reference.to_dict()
            if validation.y is not None:
                manifest.calibration = _calibration(
                    reference, checked.artifact_outputs, validation.y
                )
            report["validation"] = {
                "samples": len(validation),
                "source": validation.source,
                "labels": validation.y is not None,
                "inputs": list(validation.feeds(source.inputs[0].name)),
            }
            if labels and (cls := _class_count(checked.artifact_outputs)) and cls != len(labels):
                raise DataError(f"{len(labels)} labels given but the model outputs {cls} classes")
        else:
            zeros = {
                s.name: np.zeros([1, *[max(d, 1) for d in s.sample_shape]], np.float32)
                for s in runner.inputs
            }
            report["latency_ms"] = measure_latency(runner.run, zeros).to_dict()
        report["latency_ms"]["threads"] = threads
        report["float_ops"] = info.float_ops
        report["ops_total"] = info.ops_total
        report["conversion_seconds"] = round(time.perf_counter() - started, 3)
        drop = report.get("accuracy_drop_pts")
        report["max_accuracy_drop_pts"] = options.max_accuracy_drop
        report["passed"] = drop is None or drop <= options.max_accuracy_drop
        if not report["passed"]:
            report_path = output.with_name(output.name + ".report.json")
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            raise ValidationFailed(
                f"accuracy drop {drop:.2f} pts exceeds --max-accuracy-drop "
                f"{options.max_accuracy_drop:g}; no bundle written, report at {report_path}",
                result=ConvertResult(report=report, report_path=report_path, warnings=warnings),
            )
        if options.readiness is not None:
            warnings += _write_readiness(options.readiness, manifest, source, runner, validation)
        bundle = write_bundle(output, built.model_path, manifest, report, overwrite=options.force)
    tar_path = pack_bundle(bundle.path, bundle.path.with_suffix(".tar")) if options.tar else None
    return ConvertResult(
        report=report,
        report_path=bundle.path / "report.json",
        bundle=bundle,
        tar_path=tar_path,
        warnings=warnings,
    )


def _write_readiness(
    out_dir: Path,
    manifest: Manifest,
    source: SourceModel,
    runner: runtime.Runner,
    validation: Dataset | None,
) -> list[str]:
    """The readiness report of the artifact against its source (``--readiness DIR``)."""
    if validation is None or validation.y is None:
        return ["--readiness needs labelled --validation data (y): no readiness report written"]
    from .readiness import Scored, readiness_report, runner_scorer, source_scorer, write_report

    about = {"name": manifest.name, "version": manifest.version, "target": manifest.target}
    report = readiness_report(
        about,
        validation,
        Scored(f"{manifest.name} {manifest.target}", runner_scorer(runner)),
        Scored(f"source {source.path.name}", source_scorer(source)),
        class_names=manifest.labels,
    )
    write_report(report, out_dir)
    return []


def load_inputs(
    model: Path, options: ConvertOptions, target: Target, workdir: Path
) -> tuple[SourceModel, Dataset | None, Dataset | None, list[str]]:
    """The source model (exported into ``workdir`` as needed) and its calibration and
    validation data, as ``convert`` reads them; plus the warnings reading them raised.

    The calibration data is the samples calibration uses: at most
    ``options.calibration_samples``, drawn at random (seeded) from a larger file
    (:func:`~edgedl.converters.data.calibration_subset`); validation data is never cut, also
    when the calibration file stands in for it."""
    if options.calibration_samples < 1:
        raise UsageError(
            f"--calibration-samples must be at least 1, not {options.calibration_samples}"
        )
    kind = detect_kind(model)
    shape = _torch_sample_shape(kind, options)
    data = options.calibration or options.validation
    role = "calibration" if options.calibration else "validation"
    source = load_source(model, workdir, options.state_dict, shape, f"{role} data {data}")
    calibration, validation, warnings = _load_data(source, options, target)
    if calibration is not None:
        calibration = calibration_subset(calibration, options.calibration_samples)
    return source, calibration, validation, warnings


def _used_samples(
    info: dict[str, Any] | None, calibration: Dataset | None
) -> dict[str, Any] | None:
    """The report's ``calibration`` with which samples were used: ``samples_in_data`` (how
    many the file held) and ``sample_selection`` ("all", or a seeded random draw)."""
    if info is None or calibration is None:
        return info
    drawn = calibration.drawn_from is not None
    return {
        **info,
        "samples_in_data": calibration.samples_in_data,
        "sample_selection": (
            f"random (seed {CALIBRATION_SEED}, in file order)" if drawn else "all"
        ),
    }


def _diagnose(calibration: Dataset | None, validation: Dataset | None) -> dict[str, Any] | None:
    """The calibration data's value summary and what :func:`diagnose` found wrong with it,
    both on the samples calibration uses."""
    if calibration is None:
        return None
    separate = validation is not None and validation is not calibration
    return {
        "samples": len(calibration),
        "samples_in_data": calibration.samples_in_data,
        "calibration": value_summary(calibration.x),
        "validation": value_summary(validation.x) if separate and validation else None,
        "findings": [f.to_dict() for f in diagnose(calibration, validation)],
    }


def _check_source_fits(
    kind: SourceKind, model: Path, target: Target, options: ConvertOptions
) -> None:
    if options.state_dict is not None and kind != "torch":
        raise UsageError("--state-dict goes with a PyTorch package.module:factory model")
    if target.accepts(kind):
        return
    raise UsageError(
        f"{target.name} needs a Keras, SavedModel or PyTorch source; {model.name} is "
        f"{KIND_NAMES[kind]} (use an onnx-* target)"
    )


def _torch_sample_shape(
    kind: SourceKind, options: ConvertOptions
) -> tuple[int, ...] | dict[str, Any] | None:
    """A PyTorch module's per-sample input shape, from its calibration or validation data;
    one sample of each input when the data is an ``.npz`` of named inputs (no ``x``)."""
    if kind != "torch":
        return None
    data = options.calibration or options.validation
    if data is None:
        raise UsageError(
            "a PyTorch source takes its input shape from the data: give --calibration or "
            "--validation (.npy/.npz shaped as the module expects, e.g. N,C,H,W)"
        )
    role = "calibration" if options.calibration else "validation"
    return stored_named_samples(data, role) or stored_sample_shape(data, role)


def _class_count(outputs: dict[str, Any]) -> int | None:
    for arr in outputs.values():
        if arr.ndim == 2 and arr.shape[1] >= 2:
            return int(arr.shape[1])
    return None


def _base_report(
    manifest: Manifest,
    target: Target,
    source: SourceModel,
    device: DeviceProfile | None,
    threads: int | None,
    calibration: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "name": manifest.name,
        "version": manifest.version,
        "target": target.name,
        "runtime": target.runtime,
        "device": device.name if device else None,
        "source": {"path": str(source.path), "kind": source.kind, **source.details},
        "tools": _tool_versions(),
        "calibration": calibration,
        "inputs": [s.model_dump() for s in manifest.inputs],
        "outputs_spec": [s.model_dump() for s in manifest.outputs],
        "source_size_bytes": source.size_bytes,
        "artifact_size_bytes": manifest.size_bytes,
        "size_ratio": round(manifest.size_bytes / source.size_bytes, 4)
        if source.size_bytes
        else None,
        "sha256": manifest.sha256,
        "threads": threads,
    }


def _calibration(
    reference: Profile, outputs: Mapping[str, np.ndarray[Any, Any]], y: np.ndarray[Any, Any]
) -> dict[str, Any] | None:
    """P(correct) per top-1 confidence bin of the first classification output, fitted on the
    validation set (edgedl.calibration); None without one or without integer labels."""
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        return None
    stats, classes = batch_statistics({}, outputs)
    for key, predicted in classes.items():
        statistic = f"{key}/top1_confidence"
        hist = reference.histograms.get(statistic)
        if hist is None or predicted.shape[0] != labels.shape[0]:
            continue
        width = int(np.asarray(outputs[key.removeprefix("output/")]).shape[1])
        return fit_calibration(
            statistic, hist.edges, stats[statistic], predicted == labels, width
        ).to_dict()
    return None
