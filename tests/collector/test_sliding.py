"""Sliding-window totals stay exact through evictions, at the contract's largest figures."""

from __future__ import annotations

from tests.collector.helpers import WindowMaker

from edgedl.bundle import Manifest
from edgedl.collector.references import ReferenceModel
from edgedl.collector.sliding import Contribution, SlidingWindow
from edgedl.telemetry import MAX_COUNT, MAX_VALUE, HistogramData, TelemetryWindow

LENGTH = "input/image/length"


def _fill_top(hist: HistogramData, value: float) -> None:
    """MAX_COUNT values of ``value`` (at least the last edge), all in the open top bin."""
    hist.counts = [0] * (len(hist.counts) - 1) + [MAX_COUNT]
    hist.count = MAX_COUNT
    hist.sum = MAX_COUNT * value
    hist.sum_sq = MAX_COUNT * value * value


def _window(maker: WindowMaker, seq: int, huge: bool) -> TelemetryWindow:
    """A real window; ``huge``: MAX_COUNT in every histogram and count, lengths of MAX_VALUE."""
    window = maker.window("pi", seq, n=10)
    if huge:
        model = window.models[0]
        assert model.profile is not None
        for name, hist in model.profile.histograms.items():
            _fill_top(hist, MAX_VALUE if name == LENGTH else abs(hist.edges[-1]) + 1.0)
        _fill_top(model.latency_ms, 20_000.0)
        model.profile.samples = MAX_COUNT
        model.counts.requests = model.counts.inferences = MAX_COUNT
    return TelemetryWindow.model_validate(window.model_dump())  # within the contract


def test_a_window_at_the_limits_leaves_no_trace_once_evicted(
    reference_manifest: Manifest, windows: WindowMaker
) -> None:
    reference = ReferenceModel.from_manifest(reference_manifest)
    device = SlidingWindow(3, reference)
    fleet = Contribution.empty(reference)
    parts = [
        Contribution.from_window(seq, _window(windows, seq, huge=seq < 2).models[0], reference)[0]
        for seq in range(6)
    ]
    for part in parts:
        taken, evicted = device.add(part)
        assert taken
        fleet.add(part)
        if evicted is not None:
            fleet.remove(evicted)
    fleet.resum([device.total])
    row = reference.stats.index(LENGTH)
    for total in (device.total, fleet):
        assert total.samples == 30 and total.inferences == 30 and total.requests == 30
        assert int(total.latency.sum()) == 30
        assert int(total.ns[row]) == 30 and total.sums[row] == 64.0 * 30
        assert total.counts.sum() == sum(int(p.counts.sum()) for p in parts[3:])
