"""Write a readiness report to a folder: ``report.json`` and ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .page import render_html


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write both files (creating ``out_dir``); return their paths (JSON, HTML)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path
