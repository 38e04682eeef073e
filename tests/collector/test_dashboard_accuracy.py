"""Real accuracy from late labels: the collector's sums, its API and the dashboard panel.

Windows carrying confusion matrices (as agents send them) arrive over a real Mosquitto; the
API's accuracy, precision, recall and F1 must equal scikit-learn's on the labels the matrices
stand for, per device, per version and for the fleet, and the dashboard (headless Chromium)
must show the same accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)
from tests.collector.test_dashboard import ARGS, CHROMIUM

from edgedl.collector.accuracy import classification_metrics
from edgedl.collector.service import Collector
from edgedl.telemetry import (
    LabelCounts,
    ModelLabels,
    TelemetryWindow,
    encode_window,
    telemetry_topic,
)

CONFUSION = {
    "cam-a": [(0, 0, 30), (1, 1, 25), (1, 0, 5), (2, 2, 10), (2, 1, 3)],
    "cam-b": [(0, 0, 10), (0, 2, 8), (1, 1, 4), (2, 2, 2), (2, 0, 6)],
}


def labelled(window: TelemetryWindow, cells: list[tuple[int, int, int]]) -> TelemetryWindow:
    total = sum(c for _, _, c in cells)
    models = [m.model_copy(update={"labels": ModelLabels(confusion=cells)}) for m in window.models]
    return window.model_copy(
        update={
            "schema_version": 2,
            "models": models,
            "labels": LabelCounts(received=total, matched=total),
        }
    )


def flat(cells: list[tuple[int, int, int]]) -> tuple[list[int], list[int]]:
    y_true = [a for a, _, c in cells for _ in range(c)]
    y_pred = [p for _, p, c in cells for _ in range(c)]
    return y_true, y_pred


def test_metrics_are_scikit_learns_on_the_labels_a_matrix_stands_for() -> None:
    for cells in [*CONFUSION.values(), CONFUSION["cam-a"] + CONFUSION["cam-b"]]:
        y_true, y_pred = flat(cells)
        m = classification_metrics(cells)
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, average="macro", zero_division=0
        )
        assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
        assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((p, r, f), abs=1e-12)
    assert classification_metrics([])["accuracy"] is None


@pytest.mark.slow
def test_api_and_dashboard_show_real_accuracy(
    broker: Broker,
    sqlite_url: str,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
    tmp_path: Path,
) -> None:
    collector = start_collector(collector_config(broker, sqlite_url, windows.fleet))
    for device, cells in CONFUSION.items():
        # Split over two windows: the collector sums them.
        half = len(cells) // 2
        for seq, part in enumerate((cells[:half], cells[half:])):
            w = labelled(windows.window(device, seq), part)
            publisher.publish(telemetry_topic(w.fleet, w.device), encode_window(w)[0])
    url = f"{collector.url}/api/v1/accuracy?fleet={windows.fleet}"
    wait_until(lambda: get_json(url)["overall"]["labelled"] == 103, what="every label")
    report = get_json(url)
    both = CONFUSION["cam-a"] + CONFUSION["cam-b"]
    assert report["overall"]["accuracy"] == pytest.approx(accuracy_score(*flat(both)))
    by_device = {d["device"]: d for d in report["by_device"]}
    for device, cells in CONFUSION.items():
        assert by_device[device]["accuracy"] == pytest.approx(accuracy_score(*flat(cells)))
    (version,) = report["by_version"]
    assert version["labelled"] == 103
    series = get_json(f"{url}&bucket_s=60")["series"]
    assert sum(p["labelled"] for p in series) == 103 and all(p["end"] > p["start"] for p in series)
    assert get_json(f"{collector.url}/api/v1/accuracy?device=cam-b")["overall"]["labelled"] == 30
    bad = httpx.get(f"{collector.url}/api/v1/accuracy?since=yesterday", timeout=10)
    assert bad.status_code == 400 and "since must be a number" in bad.json()["error"]

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(collector.url)
        page.wait_for_selector("#accuracy tbody tr[data-kind=overall]", timeout=15_000)
        shown = {
            tr.get_attribute("data-kind"): tr.inner_text()
            for tr in page.locator("#accuracy tbody tr").all()
            if tr.get_attribute("data-kind") == "overall"
        }
        expected = f"{100 * accuracy_score(*flat(both)):.1f}%"
        assert expected in shown["overall"] and "103" in shown["overall"]
        assert page.locator("#accuracy tbody tr[data-kind=device]").count() == 2
        # One point (every window in the same minute): attached, though a path of no length.
        page.wait_for_selector(
            "#accuracy-chart svg path.series[data-series=real]", state="attached", timeout=15_000
        )
        browser.close()
