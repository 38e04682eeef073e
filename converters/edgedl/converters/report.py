"""Render a conversion report as a terminal table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def _embedding_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """Cosine to the source's embeddings, for a model whose outputs are embeddings."""
    if not report.get("embedding_outputs"):
        return []
    return [
        ("cosine to source, mean", _fmt(report.get("cosine_mean"), ".4f")),
        ("cosine to source, worst", _fmt(report.get("cosine_min"), ".4f")),
        ("labels", "none (embeddings): judged by cosine and SQNR"),
    ]


def render_report(report: dict[str, Any], console: Console) -> None:
    """Print one conversion's report: sizes, errors, agreement, accuracy, latency, float ops."""
    title = f"{report['name']} {report['version']} → {report['target']}"
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value")
    lat = report.get("latency_ms", {})
    rows = [
        ("source size", _fmt(report.get("source_size_bytes"), ",", " B")),
        ("artifact size", _fmt(report.get("artifact_size_bytes"), ",", " B")),
        ("size ratio", _fmt(report.get("size_ratio"), ".3f")),
        ("top-1 agreement", _fmt(report.get("top1_agreement"), ".2%")),
        ("source accuracy", _fmt(report.get("reference_accuracy"), ".2f", " %")),
        ("artifact accuracy", _fmt(report.get("artifact_accuracy"), ".2f", " %")),
        ("accuracy drop", _fmt(report.get("accuracy_drop_pts"), ".2f", " pts")),
        ("SQNR (worst output)", _fmt(report.get("sqnr_db"), ".1f", " dB")),
        *_embedding_rows(report),
        ("latency p50 / p95", f"{_fmt(lat.get('p50'), '.3f')} / {_fmt(lat.get('p95'), '.3f')} ms"),
    ]
    for name, out in (report.get("outputs") or {}).items():
        rows.append(
            (
                f"output {name}",
                f"max |err| {_fmt(out['max_abs_error'], '.4g')}, "
                f"mean |err| {_fmt(out['mean_abs_error'], '.4g')}",
            )
        )
    float_ops = report.get("float_ops") or []
    rows.append(
        (
            "ops left in float",
            ", ".join(f"{o['op']}×{o['count']}" for o in float_ops) or "none",
        )
    )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if report.get("auto"):
        render_candidates(report["auto"], console)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")


def render_candidates(auto: dict[str, Any], console: Console) -> None:
    """The ranked table of ``--target auto``: every candidate, why it was or was not chosen."""
    cosine = any(r.get("cosine_mean") is not None for r in auto["candidates"])
    bound = auto["max_accuracy_drop_pts"]
    title = f"--target auto: candidates, ranked ({auto['measure']} drop bound {bound:g} pts"
    if auto["measure"] == "cosine":  # drop = 100 x (1 - mean cosine)
        title += f": mean cosine to the source ≥ {1.0 - bound / 100.0:.4g}"
    table = Table(title=title + ")", title_justify="left")
    columns = ["#", "target", "size (B)", "drop pts"]
    columns += ["cosine mean / worst"] if cosine else []
    columns += ["SQNR dB", "p50 ms", "p95 ms", "verdict"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("target", "verdict") else "right")
    for r in auto["candidates"]:
        if "skipped" in r:
            table.add_row("-", r["target"], *["-"] * (len(columns) - 3), f"skipped: {r['skipped']}")
            continue
        verdict = "chosen" if r["chosen"] else ""
        if not r["within_bound"]:
            verdict = ", ".join(v for v in (verdict, "over the bound") if v)
        if r.get("float_layers"):
            verdict = ", ".join(v for v in (verdict, f"float: {' '.join(r['float_layers'])}") if v)
        if r["slower_than_fp32"]:
            verdict = ", ".join(
                v for v in (verdict, f"slower than fp32: {r['slower_than_fp32']}") if v
            )
        cells = [str(r["rank"]), r["target"], f"{r['size_bytes']:,}", _fmt(r["drop_pts"], "+.2f")]
        if cosine:
            cells.append(
                f"{_fmt(r.get('cosine_mean'), '.4f')} / {_fmt(r.get('cosine_min'), '.4f')}"
            )
        cells += [
            _fmt(r["sqnr_db"], ".1f"),
            _fmt(r["latency_p50_ms"], ".3f"),
            _fmt(r["latency_p95_ms"], ".3f"),
            verdict or "within the bound",
        ]
        table.add_row(*cells)
    console.print(table)
    for r in auto["candidates"]:
        if r.get("search"):
            probes = ", ".join(
                f"{p['float_layers']} → {p['drop_pts']:.2f}" for p in r["search"]["probes"]
            )
            console.print(
                f"{r['target']}: {r['search']['strategy']} search over "
                f"{r['search']['layers']} layers, {len(r['search']['probes'])} probes "
                f"(float layers → drop pts): {probes}"
            )


def render_comparison(reports: Sequence[dict[str, Any]], console: Console) -> None:
    """One row per target: the table ``make demo`` and the benchmark print."""
    table = Table(title="Targets compared")
    for col in (
        "target",
        "size (B)",
        "vs fp32",
        "accuracy %",
        "drop pts",
        "top-1 agree",
        "SQNR dB",
        "p50 ms",
        "p95 ms",
    ):
        table.add_column(col, justify="right" if col != "target" else "left")
    fp32 = {
        r["target"].split("-")[0]: r["artifact_size_bytes"]
        for r in reports
        if r["target"].endswith("fp32")
    }
    for r in reports:
        base = fp32.get(r["target"].split("-")[0])
        lat = r.get("latency_ms", {})
        table.add_row(
            r["target"],
            f"{r['artifact_size_bytes']:,}",
            _fmt(r["artifact_size_bytes"] / base if base else None, ".0%"),
            _fmt(r.get("artifact_accuracy"), ".2f"),
            _fmt(r.get("accuracy_drop_pts"), "+.2f"),
            _fmt(r.get("top1_agreement"), ".2%"),
            _fmt(r.get("sqnr_db"), ".1f"),
            _fmt(lat.get("p50"), ".3f"),
            _fmt(lat.get("p95"), ".3f"),
        )
    console.print(table)
