"""``edgedl compress``: a smaller Keras model, trained, ready for ``edgedl convert``."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from edgedl.cli import emit_json

from .compress import METHODS, CompressOptions
from .compress import compress as run_compress

_DATA = ".npz (x, optional y labels), .npy (inputs only) or a folder of images / WAV files"


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--method",
    "-m",
    type=click.Choice(METHODS),
    required=True,
    help="prune: remove filters/units; distill: train a smaller student; lowrank: "
    "split Dense/1x1 Conv2D by SVD; cluster: k-means shared weights.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help=f"Training data: {_DATA}. Without labels the original model's outputs teach.",
)
@click.option(
    "--validation",
    type=click.Path(path_type=Path),
    required=True,
    help=f"Held-out data with labels: {_DATA}.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="The .keras file to write (its report goes next to it as .json).",
)
@click.option(
    "--epochs",
    type=int,
    help="Fine-tuning / training epochs (default: prune 5, distill 20, lowrank 5, cluster 0).",
)
@click.option("--ratio", type=float, help="prune: share of each layer's filters to remove.")
@click.option(
    "--max-accuracy-drop",
    type=float,
    help="Fail (exit 3, nothing written) when accuracy drops by more points; prune "
    "without --ratio tries 75%, 50%, 25% and keeps the first within it.",
)
@click.option(
    "--width",
    type=float,
    default=0.5,
    show_default=True,
    help="distill: the student's width, a multiplier of the teacher's filters/units.",
)
@click.option("--student", help="distill: package.module:factory returning the student model.")
@click.option(
    "--alpha",
    type=float,
    help="Weight of the labels' loss, the rest on the teacher's outputs (default: "
    "distill 0.5, others 1; 0 without labels).",
)
@click.option(
    "--temperature",
    type=float,
    default=4.0,
    show_default=True,
    help="distill: softmax temperature of the soft targets.",
)
@click.option(
    "--energy",
    type=float,
    default=0.9,
    show_default=True,
    help="lowrank: share of the squared singular values to keep.",
)
@click.option("--rank", type=int, help="lowrank: a fixed rank instead of --energy.")
@click.option(
    "--clusters",
    type=int,
    default=16,
    show_default=True,
    help="cluster: distinct values per kernel.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--learning-rate", type=float, help="Adam's (default: distill 3e-3, others 1e-3).")
@click.option(
    "--schedule",
    type=click.Choice(["cosine", "constant"]),
    default="cosine",
    show_default=True,
    help="Learning rate: decaying to 0 along a half cosine over the training, or constant.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (runs repeat exactly).")
@click.option(
    "--state-dict",
    type=click.Path(path_type=Path),
    help="Weights (torch.save of a state dict) for a package.module:factory MODEL.",
)
@click.option("--force", is_flag=True, help="Replace an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def compress(
    model: Path,
    method: str,
    data: Path,
    validation: Path,
    output: Path,
    epochs: int | None,
    ratio: float | None,
    max_accuracy_drop: float | None,
    width: float,
    student: str | None,
    alpha: float | None,
    temperature: float,
    energy: float,
    rank: int | None,
    clusters: int,
    batch_size: int,
    learning_rate: float | None,
    schedule: str,
    seed: int,
    state_dict: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Make MODEL smaller by one METHOD; write a trained model edgedl convert takes.

    MODEL is a Keras .keras/.h5 file (written back as .keras), or a PyTorch nn.Sequential
    as package.module:factory with --state-dict (written as TorchScript .pt). A PyTorch
    embedding model fed named inputs (an .npz of token ids and masks, no x) takes
    --method lowrank and is written as .onnx, judged by embedding cosine.

    \b
    Example:
      edgedl compress kws.keras --method prune --ratio 0.5 \\
          --data train.npz --validation val.npz --output kws-pruned.keras
      edgedl convert kws-pruned.keras --target tflite-int8 --calibration train.npz
    """
    options = CompressOptions(
        method=method, data=data, validation=validation, output=output, epochs=epochs,
        ratio=ratio, max_accuracy_drop=max_accuracy_drop, width=width, student=student,
        alpha=alpha, temperature=temperature, energy=energy, rank=rank, clusters=clusters,
        batch_size=batch_size, learning_rate=learning_rate, schedule=schedule, seed=seed,
        force=force,
        state_dict=state_dict,
    )  # fmt: skip
    console = Console(stderr=True, highlight=False)
    if not as_json:
        console.print(f"compressing {model} by {method}")
    result = run_compress(model, options, console=None if as_json else console)
    if as_json:
        emit_json(result.report)
        return
    r = result.report
    table = Table(title=f"edgedl compress --method {method}")
    for col in ("", "before", "after"):
        table.add_column(col, justify="right")
    table.add_row("parameters", f"{r['parameters']['before']:,}", f"{r['parameters']['after']:,}")
    if "cosine" in r:  # an embedding model: no labels, judged against its own embeddings
        cos = r["cosine"]
        table.add_row(
            "held-out cosine mean / worst",
            "1 / 1",
            f"{cos['after']['mean']:.4f} / {cos['after']['min']:.4f}",
        )
    else:
        table.add_row("multiply-adds", f"{r['macs']['before']:,}", f"{r['macs']['after']:,}")
        table.add_row(
            "held-out accuracy",
            f"{r['accuracy']['before']:.2f}%",
            f"{r['accuracy']['after']:.2f}%",
        )
    Console(file=sys.stdout).print(table)
    console.print(f"[green]model written:[/] {result.output} ({r['training_seconds']:.0f} s)")
    if "torch_export" in r:
        console.print(
            f"[green]torch.export program written:[/] {r['torch_export']} (for the tflite-* targets)"
        )
