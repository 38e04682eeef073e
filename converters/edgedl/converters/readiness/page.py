"""The readiness report as one self-contained HTML page (inline SVG figures, no scripts).

Every number shown sits in an element with a ``data-key`` naming where it comes from in
``report.json`` (``artifact.per_class.3.f1``), so the page can be checked against the JSON
and against a recomputation from raw predictions.
"""

from __future__ import annotations

from html import escape
from typing import Any

from . import plots

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}.figs{display:flex;
flex-wrap:wrap;gap:1em;align-items:flex-start}.pass{color:#070}.fail{color:#b00;font-weight:bold}
.muted{color:#777}svg{max-width:100%;height:auto}
"""


def _num(value: Any, key: str, spec: str = ".4f") -> str:
    text = "–" if value is None else format(value, spec) if not isinstance(value, str) else value
    return f'<td data-key="{escape(key)}">{escape(text)}</td>'


def _th(*cols: str, text: tuple[int, ...] = (0,)) -> str:
    """A header row; the columns numbered in ``text`` hold text (left-aligned)."""
    return "<tr>" + "".join(f'<th class="{"l" if i in text else ""}">{escape(c)}</th>'
                            for i, c in enumerate(cols)) + "</tr>"  # fmt: skip


def _summary(report: dict[str, Any]) -> str:
    models = [("artifact", report["artifact_name"])]
    if report["reference"]:
        models.append(("reference", report["reference_name"]))
    rows = [_th("model", "accuracy", "macro F1", "ECE", "confidently wrong",
                "mean conf. right", "mean conf. wrong")]  # fmt: skip
    for key, name in models:
        m = report[key]
        rows.append(
            f'<tr><td class="l">{escape(key)}: {escape(name)}</td>'
            + _num(m["accuracy"], f"{key}.accuracy")
            + _num(m["macro_f1"], f"{key}.macro_f1")
            + _num(m["ece"], f"{key}.ece")
            + _num(m["confidently_wrong_rate"], f"{key}.confidently_wrong_rate")
            + _num(m["mean_confidence_correct"], f"{key}.mean_confidence_correct")
            + _num(m["mean_confidence_wrong"], f"{key}.mean_confidence_wrong")
            + "</tr>"
        )
    out = "<table>" + "".join(rows) + "</table>"
    comp = report["comparison"]
    if comp:
        out += (
            "<table>" + _th("reference vs artifact", "value")
            + '<tr><td class="l">top-1 agreement</td>'
            + _num(comp["agreement"], "comparison.agreement") + "</tr>"
            + '<tr><td class="l">accuracy drop (pts)</td>'
            + _num(comp["accuracy_drop_pts"], "comparison.accuracy_drop_pts", ".2f") + "</tr>"
            + "</table>"
        )  # fmt: skip
    return out


def _per_class(report: dict[str, Any]) -> str:
    keys = ["artifact"] + (["reference"] if report["reference"] else [])
    head = ["class"]
    for k in keys:
        head += [f"{k} precision", f"{k} recall", f"{k} F1"]
    head.append("support")
    rows = [_th(*head)]
    for i, name in enumerate(report["class_names"]):
        cells = f'<td class="l">{escape(name)}</td>'
        for k in keys:
            c = report[k]["per_class"][i]
            for metric in ("precision", "recall", "f1"):
                cells += _num(c[metric], f"{k}.per_class.{i}.{metric}")
        cells += _num(report["artifact"]["per_class"][i]["support"],
                      f"artifact.per_class.{i}.support", "d")  # fmt: skip
        rows.append(f"<tr>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _robustness(rob: dict[str, Any]) -> str:
    rows = rob["corruptions"]
    has_ref = "reference_accuracy" in rows[0]
    head = ["corruption", "severity", "level", "accuracy", "confidently wrong"]
    if has_ref:
        head += ["reference accuracy", "agreement"]
    table = [_th(*head, text=(0, 2))]
    for i, r in enumerate(rows):
        level = "" if r["level"] is None else f"{r['level']:g} {r['unit']}"
        cells = (f'<td class="l">{escape(r["corruption"])}</td><td>{r["severity"]}</td>'
                 f'<td class="l">{escape(level)}</td>'
                 + _num(r.get("accuracy"), f"robustness.corruptions.{i}.accuracy")
                 + _num(r.get("confidently_wrong_rate"),
                        f"robustness.corruptions.{i}.confidently_wrong_rate"))  # fmt: skip
        if has_ref:
            cells += _num(r.get("reference_accuracy"),
                          f"robustness.corruptions.{i}.reference_accuracy")  # fmt: skip
            cells += _num(r.get("agreement"), f"robustness.corruptions.{i}.agreement")
        table.append(f"<tr>{cells}</tr>")
    out = f"<p>Input kind: <b>{escape(rob['kind'])}</b>, {rob['samples']} samples.</p>"
    if len(rows) > 1:
        out += f'<div class="figs">{plots.robustness(rows)}</div>'
    out += "<table>" + "".join(table) + "</table>"
    agent = {r["input"]: r for r in (rob.get("agent") or [])}
    g_head = ["input", "what it is", "artifact here", "confident share"]
    if agent:
        g_head += ["agent status", "agent answer", "warnings counted"]
    g_rows = [_th(*g_head, text=(0, 1, 2, 5))]
    for r in rob["garbage"]:
        cells = (f'<td class="l">{escape(r["input"])}</td><td class="l">{escape(r["description"])}</td>'
                 f'<td class="l">{escape(r["local"])}</td>'
                 + _num(r.get("confident_rate"), f"robustness.garbage.{r['input']}.confident_rate",
                        ".2f"))  # fmt: skip
        if agent:
            a = agent.get(r["input"], {})
            cells += (_num(a.get("status"), f"robustness.agent.{r['input']}.status", "d")
                      + f'<td class="l">{escape(str(a.get("answer", "")))}</td>'
                      + _num(a.get("warnings"), f"robustness.agent.{r['input']}.warnings", "g"))  # fmt: skip
        g_rows.append(f"<tr>{cells}</tr>")
    out += "<h3>Broken inputs</h3><table>" + "".join(g_rows) + "</table>"
    if "agent alive afterwards" in agent:
        status = agent["agent alive afterwards"].get("status")
        out += f'<p>Agent ready afterwards: <span data-key="robustness.agent.alive">{status}</span></p>'
    return out


def _load(load: dict[str, Any]) -> str:
    steps = load["steps"]
    bound = load.get("p99_bound_ms")
    head = _th(load.get("mode", "step"), "requests", "req/s", "p50 ms", "p95 ms", "p99 ms",
               "errors", "CPU µs/req")  # fmt: skip
    rows = []
    for i, r in enumerate(steps):
        errors = ", ".join(f"{k}×{v}" for k, v in r["errors"].items()) or "0"
        rows.append(
            f'<tr><td class="l">{escape(str(r["step"]))}</td>'
            + _num(r["requests"], f"load.steps.{i}.requests", "d")
            + _num(r["throughput_rps"], f"load.steps.{i}.throughput_rps", ".1f")
            + _num(r["p50_ms"], f"load.steps.{i}.p50_ms", ".2f")
            + _num(r["p95_ms"], f"load.steps.{i}.p95_ms", ".2f")
            + _num(r["p99_ms"], f"load.steps.{i}.p99_ms", ".2f")
            + f"<td>{escape(errors)}</td>"
            + _num(r["client_cpu_us_per_request"], f"load.steps.{i}.client_cpu", ".0f")
            + "</tr>"
        )
    knee = load.get("knee")
    knee_text = (f"knee: {knee['step']} ({knee['throughput_rps']:.1f} req/s with p99 "
                 f"{knee['p99_ms']:.2f} ms under {bound:g} ms)" if knee and bound is not None
                 else "no step kept p99 under the bound" if bound is not None else "")  # fmt: skip
    return (
        f"<p>{escape(load.get('url', ''))} model <b>{escape(load.get('model', ''))}</b>. "
        f"{escape(knee_text)}</p>"
        f'<div class="figs">{plots.load(steps, bound)}</div>'
        f"<table>{head}{''.join(rows)}</table>"
    )


def _gates(gates: dict[str, Any]) -> str:
    verdict = "PASSED" if gates["passed"] else "FAILED"
    cls = "pass" if gates["passed"] else "fail"
    items = "".join(
        f'<li class="{"pass" if g["passed"] else "fail"}">{escape(g["gate"])}: '
        f"{escape(g['detail'])}</li>"
        for g in gates["results"]
    )
    return f'<p class="{cls}" data-key="gates.passed">{verdict}</p><ul>{items}</ul>'


def render_html(report: dict[str, Any]) -> str:
    """The whole page for one readiness report."""
    names = report["class_names"]
    art, ref = report["artifact"], report["reference"]
    matrices = [(f"artifact: {report['artifact_name']}", art["confusion_matrix"])]
    curves = [("artifact", art["reliability"], art["ece"])]
    f1 = [("artifact", art["per_class"])]
    if ref:
        matrices.append((f"reference: {report['reference_name']}", ref["confusion_matrix"]))
        curves.append(("reference", ref["reliability"], ref["ece"]))
        f1.append(("reference", ref["per_class"]))
    title = (
        f"{report.get('name', 'model')} {report.get('version', '')} ({report.get('target', '')})"
    )
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Readiness: "
        f"{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Readiness report: {escape(title)}</h1>",
        f'<p class="muted">Validation data {escape(report["validation"]["source"])}, '
        f"{report['validation']['samples']} samples.</p>",
    ]
    if report.get("gates"):
        parts += ["<h2>Gates</h2>", _gates(report["gates"])]
    parts += [
        "<h2>Quality</h2>", _summary(report),
        "<h2>Per class</h2>", f'<div class="figs">{plots.per_class_f1(f1)}</div>',
        _per_class(report),
        "<h2>Confusion matrix</h2>", f'<div class="figs">{plots.confusion(matrices, names)}</div>',
        "<h2>Calibration</h2>",
        "<p>Expected calibration error: the share-weighted gap between confidence and accuracy "
        "over ten confidence bins. Points under the diagonal are over-confident.</p>",
        f'<div class="figs">{plots.reliability(curves)}</div>',
        "<h2>Robustness</h2>", _robustness(report["robustness"]),
    ]  # fmt: skip
    if report.get("load"):
        parts += ["<h2>Load</h2>", _load(report["load"])]
    parts.append("</body></html>")
    return "\n".join(parts)
