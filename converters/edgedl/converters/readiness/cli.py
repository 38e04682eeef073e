"""``edgedl report``: a bundle's readiness report, and release gates for CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click
from rich.console import Console
from rich.table import Table

from edgedl.bundle import Bundle
from edgedl.cli import emit_json
from edgedl.errors import ValidationFailed

from ..data import load_dataset
from .build import Scored, bundle_scorer, is_bundle, load_json, readiness_report, source_scorer
from .corruptions import InputKind
from .files import write_report
from .policy import check_policy, load_policy


def reference_scored(path: Path, sample_shape: tuple[int, ...]) -> Scored:
    """A float reference: another bundle (TF-free), or a source model (loads its framework)."""
    if is_bundle(path):
        ref = Bundle.open(path)
        return Scored(f"{ref.manifest.name} {ref.manifest.target}", bundle_scorer(ref))
    import tempfile

    from ..sources import detect_kind, load_source

    # Some sources keep files in their work folder (an exported graph): it lives as long as
    # the scorer, which holds it.
    workdir = tempfile.TemporaryDirectory(prefix="edgedl-report-")
    torch_shape = sample_shape if detect_kind(path) == "torch" else None
    source = load_source(path, Path(workdir.name), None, torch_shape)
    score = source_scorer(source)

    def scored(x: Any) -> Any:
        assert workdir is not None
        return score(x)

    return Scored(f"source {path.name}", scored)


def print_gates(gates: dict[str, Any], console: Console) -> None:
    """One line per gate, failed ones in red."""
    for g in gates["results"]:
        mark = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
        console.print(f"{mark} {g['gate']}: {g['detail']}", highlight=False)


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The headline figures as a table."""
    table = Table(title=f"readiness: {report['name']} {report['version']} ({report['target']})",
                  title_justify="left")  # fmt: skip
    table.add_column("")
    table.add_column("artifact", justify="right")
    if report["reference"]:
        table.add_column("reference", justify="right")
    models = [report["artifact"], *([report["reference"]] if report["reference"] else [])]
    for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("ece", "ECE"),
                       ("confidently_wrong_rate", "confidently wrong")):  # fmt: skip
        table.add_row(label, *[f"{m[key]:.4f}" for m in models])
    console.print(table)
    if report["comparison"]:
        c = report["comparison"]
        console.print(f"top-1 agreement {c['agreement']:.2%}, accuracy drop "
                      f"{c['accuracy_drop_pts']:.2f} pts")  # fmt: skip


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--validation",
    required=True,
    type=click.Path(path_type=Path),
    help="Labelled data: .npz (x, y) or a folder of class sub-folders.",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for report.html and report.json.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path),
    help="Float reference to compare with: a bundle (e.g. the fp32 one) or the source model.",
)
@click.option(
    "--input-kind",
    type=click.Choice(["auto", "image", "audio", "tensor"]),
    default="auto",
    show_default=True,
    help="Which corruptions apply (auto: from the input's shape).",
)
@click.option(
    "--agent",
    "agent_url",
    help="URL of a running agent serving BUNDLE: send it the broken inputs and record its answers.",
)
@click.option("--model", "model_name", help="The model's name on --agent (default: the bundle's).")
@click.option(
    "--loadtest",
    type=click.Path(path_type=Path),
    help="Results of 'edgedl loadtest --json' to include (and gate on).",
)
@click.option(
    "--policy", type=click.Path(path_type=Path), help="Release gates (TOML); exit 3 when one fails."
)
@click.option(
    "--robustness-samples",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Validation samples the robustness suite uses.",
)
@click.option("--json", "as_json", is_flag=True, help="Print report.json instead of a summary.")
def report(
    bundle: Path,
    validation: Path,
    output: Path,
    reference: Path | None,
    input_kind: str,
    agent_url: str | None,
    model_name: str | None,
    loadtest: Path | None,
    policy: Path | None,
    robustness_samples: int,
    as_json: bool,
) -> None:
    """Write a readiness report for BUNDLE: per-class quality, calibration, robustness, load.

    \b
    Example:
      edgedl report digits-int8 --validation test.npz --reference digits-fp32 \\
          --output readiness --policy policy.toml
    """
    gate_policy = load_policy(policy) if policy else None
    load = load_json(loadtest) if loadtest else None
    b = Bundle.open(bundle)
    spec = b.manifest.inputs[0]
    data = load_dataset(validation, spec.sample_shape, "validation")
    artifact = Scored(f"{b.manifest.name} {b.manifest.target}", bundle_scorer(b))
    ref = reference_scored(reference, spec.sample_shape) if reference else None
    about = {"name": b.manifest.name, "version": b.manifest.version, "target": b.manifest.target,
             "bundle": str(b.path)}  # fmt: skip
    agent = (agent_url, model_name or b.manifest.name, spec.name) if agent_url else None
    result = readiness_report(
        about, data, artifact, ref,
        class_names=b.manifest.labels,
        kind=None if input_kind == "auto" else cast(InputKind, input_kind),
        agent=agent, load=load, robustness_samples=robustness_samples,
    )  # fmt: skip
    if gate_policy is not None:
        result["gates"] = check_policy(gate_policy, result)
    json_path, html_path = write_report(result, output)
    console = Console(stderr=as_json, highlight=False)
    if as_json:
        emit_json(result)
    else:
        print_summary(result, console)
        console.print(f"[green]report written:[/] {html_path} and {json_path}")
    gates = result.get("gates")
    if gates:
        print_gates(gates, Console(stderr=True, highlight=False))
        failed = [g for g in gates["results"] if not g["passed"]]
        if failed:
            raise ValidationFailed(
                f"{len(failed)} of {len(gates['results'])} gates failed: "
                + "; ".join(f"{g['gate']}: {g['detail']}" for g in failed)
            )
