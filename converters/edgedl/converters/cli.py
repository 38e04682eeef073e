"""``edgedl convert`` and ``edgedl targets``."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgedl.cli import emit_json
from edgedl.errors import ValidationFailed

from .auto import AUTO, convert_auto
from .convert import ConvertOptions
from .convert import convert as run_convert
from .report import render_report
from .targets import TARGETS

_DATA_HELP = ".npy (inputs), .npz (x, optional y labels), or a folder of images / WAV files"


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "-t",
    help="Conversion target (see 'edgedl targets'), or 'auto': the fastest candidate within "
    "--max-accuracy-drop; default: the device's.",
)
@click.option(
    "--device",
    "-d",
    help="Device profile (see 'edgedl devices'): picks target, threads, providers.",
)
@click.option(
    "--calibration", type=click.Path(path_type=Path), help=f"Calibration data: {_DATA_HELP}."
)
@click.option(
    "--validation", type=click.Path(path_type=Path), help=f"Validation data: {_DATA_HELP}."
)
@click.option("--name", help="Model name in the manifest (default: the model file's name).")
@click.option("--version", "version", default="1", show_default=True, help="Model version.")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="Bundle directory to write (default: ./NAME-VERSION-TARGET).",
)
@click.option(
    "--io", type=click.Choice(["int8", "uint8"]), help="Integer I/O type for tflite-int8."
)
@click.option("--labels", type=click.Path(path_type=Path), help="Class names, one per line.")
@click.option(
    "--state-dict",
    type=click.Path(path_type=Path),
    help="Weights (torch.save of a state dict) for a package.module:factory MODEL.",
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=-100.0, max=100.0),
    callback=lambda ctx, param, value: _a_number(param, value),
    default=1.0,
    show_default=True,
    help="Fail (exit 3) when accuracy drops by more percentage points (absolute, -100 to "
    "100; below 0 asks for a gain); the bound of --target auto.",
)
@click.option(
    "--calibration-samples",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Use at most this many calibration samples (a seeded random draw from a larger "
    "file, kept in file order).",
)
@click.option(
    "--threads", type=click.IntRange(min=0), help="Runtime threads for validation latency."
)
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@click.option("--tar", "as_tar", is_flag=True, help="Also write the bundle as a single .tar.")
@click.option(
    "--readiness",
    type=click.Path(path_type=Path),
    help="Also write a readiness report (report.html, report.json: per-class quality, "
    "calibration, robustness vs the source) to this folder; needs labelled --validation.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (no progress).")
def convert(
    model: Path,
    target: str | None,
    device: str | None,
    calibration: Path | None,
    validation: Path | None,
    name: str | None,
    version: str,
    output: Path | None,
    io: str | None,
    labels: Path | None,
    state_dict: Path | None,
    max_accuracy_drop: float,
    calibration_samples: int,
    threads: int | None,
    force: bool,
    as_tar: bool,
    readiness: Path | None,
    as_json: bool,
) -> None:
    """Convert MODEL into a validated bundle.

    MODEL is a .keras/.h5 file, a SavedModel directory, an .onnx file, a PyTorch
    TorchScript (.pt) or torch.export (.pt2) file, or package.module:factory (with
    --state-dict).

    \b
    Example:
      edgedl convert digits.keras --target tflite-int8 \\
          --calibration train.npz --validation test.npz
    """
    options = ConvertOptions(
        target=target,
        device=device,
        calibration=calibration,
        validation=validation,
        name=name,
        version=version,
        output=output,
        io=io,
        labels=labels,
        state_dict=state_dict,
        max_accuracy_drop=max_accuracy_drop,
        calibration_samples=calibration_samples,
        threads=threads,
        force=force,
        tar=as_tar,
        readiness=readiness,
        show_progress=not as_json and sys.stderr.isatty(),
    )
    console = _console(stderr=as_json)
    options.log = _console(stderr=True).print
    try:
        result = (convert_auto if target == AUTO else run_convert)(model, options)
    except ValidationFailed as exc:
        failed = getattr(exc, "result", None)
        if failed is not None:
            if as_json:
                emit_json({"bundle": None, "report_path": str(failed.report_path), **failed.report})
            else:
                render_report(failed.report, console)
        raise
    if as_json:
        emit_json(
            {
                "bundle": str(result.bundle.path) if result.bundle else None,
                "tar": str(result.tar_path) if result.tar_path else None,
                **result.report,
            }
        )
        return
    render_report(result.report, console)
    if result.bundle is not None:
        console.print(f"[green]bundle written:[/] {result.bundle.path}")
    if result.tar_path is not None:
        console.print(f"[green]tar written:[/] {result.tar_path}")
    if readiness is not None and (readiness / "report.html").is_file():
        console.print(f"[green]readiness report written:[/] {readiness / 'report.html'}")


def _a_number(param: click.Parameter, value: float) -> float:
    """``value``, or a usage error when it is NaN (which FloatRange lets through)."""
    if math.isnan(value):
        raise click.BadParameter("nan is not a number of points", param=param)
    return value


def _console(stderr: bool = False) -> Console:
    """A console; off a terminal (a log, CI) 160 columns wide, so tables are not cut to 80."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, width=160)
    return console


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def targets(as_json: bool) -> None:
    """List the conversion targets and which sources each accepts."""
    if as_json:
        emit_json([t.to_dict() for t in TARGETS.values()])
        return
    table = Table(
        title="Conversion targets",
        caption="--target auto: the fastest of the device's int8 / fp16 / dynamic / fp32 "
        "within --max-accuracy-drop",
    )
    for col in ("target", "runtime", "calibration", "sources", "what it is"):
        table.add_column(col)
    for t in TARGETS.values():
        d = t.to_dict()
        table.add_row(
            t.name,
            t.runtime,
            "needed" if t.needs_calibration else "-",
            ", ".join(d["sources"]),
            t.description,
        )
    _console().print(table)
