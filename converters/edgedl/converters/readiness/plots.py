"""The report's figures, drawn with matplotlib (Agg) as inline SVG text.

Each function takes the report's own numbers (the dictionaries :mod:`.metrics` and the
suites produce), so a figure can never show something the tables do not.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

ARTIFACT = "#1f77b4"
REFERENCE = "#ff7f0e"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    return plt


def _svg(fig: Any) -> str:
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def confusion(matrices: Sequence[tuple[str, list[list[int]]]], class_names: Sequence[str]) -> str:
    """One heat map per (title, matrix), counts written in the cells."""
    plt = _pyplot()
    n = len(class_names)
    size = max(3.0, 0.35 * n + 1.5)
    fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices), size), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], matrices, strict=True):
        ax.imshow(matrix, cmap="Blues")
        ax.set_title(title)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        long = n > 6 or max(len(c) for c in class_names) > 4
        ax.set_xticks(
            range(n), class_names, rotation=45 if long else 0, ha="right" if long else "center"
        )
        ax.set_yticks(range(n), class_names)
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                if count:
                    colour = "white" if count > peak / 2 else "black"
                    ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def reliability(curves: Sequence[tuple[str, list[dict[str, Any]], float]]) -> str:
    """Accuracy against confidence per bin for each (name, bins, ECE); the diagonal is perfect."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for (name, bins, ece), colour in zip(curves, (ARTIFACT, REFERENCE), strict=False):
        pts = [(b["confidence"], b["accuracy"], b["count"]) for b in bins if b["count"]]
        total = sum(p[2] for p in pts) or 1
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, alpha=0.6,
                label=f"{name} (ECE {ece:.3f})")  # fmt: skip
        # Marker area grows with the bin's share of samples: a bin of three is not a trend.
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colour, zorder=3,
                   s=[12 + 300 * p[2] / total for p in pts])  # fmt: skip
    ax.set_xlim(0, 1.04)
    ax.set_ylim(0, 1.04)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title("marker area: share of samples in the bin", fontsize=8)
    return _svg(fig)


def per_class_f1(series: Sequence[tuple[str, list[dict[str, Any]]]]) -> str:
    """Grouped bars of F1 per class, one group per class, one bar per model."""
    plt = _pyplot()
    names = [r["class"] for r in series[0][1]]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(names) + 2), 3.0))
    width = 0.8 / len(series)
    for k, ((label, rows), colour) in enumerate(zip(series, (ARTIFACT, REFERENCE), strict=False)):
        ax.bar([i + k * width for i in range(len(names))], [r["f1"] for r in rows], width,
               label=label, color=colour)  # fmt: skip
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.legend(fontsize=7, loc="lower right")
    return _svg(fig)


def robustness(rows: list[dict[str, Any]]) -> str:
    """Accuracy against severity, one panel per corruption (artifact solid, reference dashed)."""
    plt = _pyplot()
    clean = next(r for r in rows if r["corruption"] == "clean")
    names = [n for n in dict.fromkeys(r["corruption"] for r in rows) if n != "clean"]
    cols = min(3, max(1, len(names)))
    nrows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.4 * nrows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        mine = [clean, *[r for r in rows if r["corruption"] == name]]
        sev = [r["severity"] for r in mine]
        ax.plot(sev, [r.get("accuracy") for r in mine], marker="o", color=ARTIFACT,
                label="artifact")  # fmt: skip
        if "reference_accuracy" in clean:
            ax.plot(sev, [r.get("reference_accuracy") for r in mine], marker="s",
                    linestyle="--", color=REFERENCE, label="reference")  # fmt: skip
        ax.set_title(name)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(sev)
        ax.set_xlabel("severity")
    axes.flat[0].set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def load(rows: list[dict[str, Any]], p99_bound_ms: float | None) -> str:
    """Throughput and p99 latency per load step, and p99 against throughput."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.0))
    steps = [str(r["step"]) for r in rows]
    left.bar(steps, [r["throughput_rps"] for r in rows], color=ARTIFACT)
    left.set_xlabel(rows[0]["mode"] if rows else "step")
    left.set_ylabel("requests/s")
    right.plot([r["throughput_rps"] for r in rows], [r["p99_ms"] for r in rows], marker="o",
               color=ARTIFACT)  # fmt: skip
    for r in rows:
        right.annotate(str(r["step"]), (r["throughput_rps"], r["p99_ms"]), fontsize=7)
    if p99_bound_ms is not None:
        right.axhline(
            p99_bound_ms, color="red", linestyle=":", label=f"p99 bound {p99_bound_ms:g} ms"
        )
        right.legend(fontsize=7)
    right.set_xlabel("requests/s")
    right.set_ylabel("p99 ms")
    fig.tight_layout()
    return _svg(fig)
