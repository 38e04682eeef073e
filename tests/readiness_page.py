"""Check a readiness report page in headless Chromium against raw predictions.

Shared by the digits test (tests/readiness) and the keyword-spotting one (tests/examples):
open ``report.html`` from disk in Debian's chromium (playwright), screenshot it, read every
number the page shows (``data-key`` cells) and compare them with metrics recomputed here,
independently of edgedl's metrics module, from the scores a runtime gives on the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def page_figures(html: Path, screenshot: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Every ``data-key`` cell's text as the browser renders it, and facts about the page.

    Facts: how many inline SVG figures it drew, whether any element asked the network for
    anything (a self-contained page must not), and its title.
    """
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri())
            page.screenshot(path=str(screenshot), full_page=True)
            cells = page.eval_on_selector_all(
                "[data-key]", "els => els.map(e => [e.dataset.key, e.innerText.trim()])"
            )
            facts = {
                "svg": page.eval_on_selector_all("svg", "els => els.length"),
                "title": page.title(),
                "remote_requests": [u for u in requests if not u.startswith("file:")],
            }
        finally:
            browser.close()
    return dict(cells), facts


def softmaxed(scores: NDArray[Any]) -> NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64)
    if s.min() >= 0 and np.allclose(s.sum(axis=1), 1.0, atol=1e-2):
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def recompute(scores: NDArray[Any], y: NDArray[np.int64], prefix: str) -> dict[str, float]:
    """The page's figures for one model, from its raw scores (sklearn, and ECE by hand)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    probs = softmaxed(scores)
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    classes = probs.shape[1]
    p, r, f, support = precision_recall_fscore_support(
        y, pred, labels=list(range(classes)), zero_division=0
    )
    correct = pred == y
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        in_bin = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    out = {
        f"{prefix}.accuracy": accuracy_score(y, pred),
        f"{prefix}.macro_f1": float(np.mean(f)),
        f"{prefix}.ece": ece,
        f"{prefix}.confidently_wrong_rate": float(np.mean(~correct & (conf >= 0.9))),
    }
    for i in range(classes):
        out[f"{prefix}.per_class.{i}.precision"] = p[i]
        out[f"{prefix}.per_class.{i}.recall"] = r[i]
        out[f"{prefix}.per_class.{i}.f1"] = f[i]
        if prefix == "artifact":  # the page shows support once, beside the artifact
            out[f"{prefix}.per_class.{i}.support"] = support[i]
    return out


def assert_page_matches(shown: dict[str, str], expected: dict[str, float]) -> None:
    """Every recomputed figure is on the page, equal to the digits it shows."""
    for key, value in expected.items():
        assert key in shown, f"{key} not on the page"
        text = shown[key]
        decimals = len(text.split(".")[1]) if "." in text else 0
        assert float(text) == round(float(value), decimals), (key, text, value)


def scores_of(bundle: Path, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """The bundle's class scores on ``x``, through the runtime loader, in batches of 64."""
    from edgedl import runtime

    runner = runtime.load(bundle)
    name = runner.inputs[0].name
    out = next(s.name for s in runner.outputs if len(s.shape) == 2)
    return np.concatenate([runner.run({name: x[i : i + 64]})[out] for i in range(0, len(x), 64)])
