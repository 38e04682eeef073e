"""The CUSUM over windows: its stated run length, small shifts found, state kept over restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tests.collector.helpers import (
    Broker,
    Publisher,
    WindowMaker,
    collector_config,
    get_json,
    wait_until,
)

from edgedl.collector.config import SequentialConfig
from edgedl.collector.references import ReferenceModel
from edgedl.collector.sequential import CusumState, SequentialDetector, alarm_level
from edgedl.collector.service import Collector
from edgedl.collector.sliding import Contribution
from edgedl.collector.store import Store
from edgedl.profile import Profile

STAT = "input/x/feature[0]"


def _reference(rng: np.random.Generator, n_ref: int) -> ReferenceModel:
    profile = Profile.from_reference({"x": rng.standard_normal((n_ref, 2))}, {}, bins=10)
    return ReferenceModel.from_profile("sim", "1", "0" * 64, profile)


def _run(
    det: SequentialDetector,
    reference: ReferenceModel,
    means: np.ndarray,
    n_cur: int,
    stop_at_alarm: bool,
) -> int:
    """Feed window means of ``n_cur`` samples (exact sums); alarm onsets, or the first alarm's
    window (1-based) when ``stop_at_alarm`` (0: none)."""
    row = reference.stats.index(STAT)
    sums, ns = np.zeros(len(reference.stats)), np.zeros(len(reference.stats))
    ns[row] = n_cur
    onsets, was = 0, False
    for t, m in enumerate(means):
        sums[row] = m * n_cur
        det.observe(det.last_seq + 1, sums, ns, reference)
        now = det.states[STAT].alarmed
        if now and stop_at_alarm:
            return t + 1
        onsets += now and not was
        was = now
    return 0 if stop_at_alarm else onsets


def test_the_stated_run_length_holds_for_an_exact_reference() -> None:
    # No reference noise (its mean is the truth, no margin): the level from Siegmund's
    # approximation gives the asked-for mean windows between false alarms.
    rng = np.random.default_rng(1)
    reference = _reference(rng, 2000)
    row = reference.stats.index(STAT)
    reference.mean[row], reference.std[row] = 0.0, 1.0
    cfg = SequentialConfig(windows_between_false_alarms=50, reference_margin_se=0.0)
    lengths = []
    for _ in range(400):
        det = SequentialDetector(cfg)
        lengths.append(_run(det, reference, rng.standard_normal(2000) / np.sqrt(200), 200, True))
    assert 0 not in lengths
    assert 0.8 * 50 <= np.mean(lengths) <= 1.25 * 50, np.mean(lengths)


def test_a_reference_off_by_its_whole_margin_alarms_no_more_often_than_stated() -> None:
    # The worst reference the margin covers: its mean 1.5 standard errors off the truth.
    rng = np.random.default_rng(2)
    reference = _reference(rng, 2000)
    row = reference.stats.index(STAT)
    reference.std[row] = 1.0
    reference.mean[row] = -1.5 / np.sqrt(reference.counts[row].sum())
    cfg = SequentialConfig(windows_between_false_alarms=50)
    lengths = []
    for _ in range(400):
        det = SequentialDetector(cfg)
        lengths.append(_run(det, reference, rng.standard_normal(3000) / np.sqrt(400), 400, True))
    assert 0 not in lengths
    # One side now alarms as a one-sided CUSUM would: about twice the two-sided figure.
    assert 50 <= np.mean(lengths) <= 2.5 * 50, np.mean(lengths)


def test_a_tenth_sd_shift_is_found_within_ten_windows_at_2000_against_2000() -> None:
    rng = np.random.default_rng(3)
    cfg = SequentialConfig()  # 1,000 windows between false alarms
    found = []
    for _ in range(100):
        reference = _reference(rng, 2000)
        means = 0.1 + rng.standard_normal(10) / np.sqrt(2000)
        found.append(_run(SequentialDetector(cfg), reference, means, 2000, True) > 0)
    # About 96% (bench/drift_power.py, 200 trials); the misses are references whose own mean
    # happens to lie towards the shift.
    assert np.mean(found) >= 0.9


def test_the_cusum_continues_where_it_stood_after_a_collector_restart(
    broker: Broker,
    sqlite_url: str,
    manifest_file: Path,
    publisher: Publisher,
    windows: WindowMaker,
    start_collector: Callable[..., Collector],
) -> None:
    # Reload only 1 + 2 windows at start, so only the saved state can account for the rest.
    config = collector_config(
        broker,
        sqlite_url,
        windows.fleet,
        references=[str(manifest_file)],
        **{"drift.window_count": 2, "drift.baseline_windows": 1},
    )
    shift = 0.004  # about 0.15 sd of the per-sample image mean: the score grows slowly
    first = start_collector(config)
    for seq in range(8):
        publisher.publish(*windows.payload("cam", seq, shift=shift))
    wait_until(lambda: first.store.count_windows() == 8, what="8 windows")
    wait_until(lambda: _cusum(first) and _cusum(first)["samples"] == 400, what="two steps")
    first.stop()

    second = start_collector(config)
    for seq in range(8, 16):
        publisher.publish(*windows.payload("cam", seq, shift=shift))
    got = wait_until(
        lambda: (c := _cusum(second)) and c["samples"] == 800 and c,
        what="four steps of 200 samples: two from before the restart, two after",
    )

    # The same windows fed to one detector that never stopped.
    reference = ReferenceModel.from_manifest(windows.manifest)
    det = SequentialDetector(SequentialConfig())
    for seq in range(16):
        model = windows.window("cam", seq, shift=shift).models[0]
        det.observe(seq, *_sums(Contribution.from_window(seq, model, reference)[0]), reference)
    expected = next(d for d in det.decisions() if d.statistic == "input/image/mean")
    assert got["score"] == expected.score and got["effect"] == expected.effect
    assert got["score"] > 0


def _sums(c: Contribution) -> tuple[np.ndarray, np.ndarray]:
    return c.sums, c.ns


def _cusum(collector: Collector) -> dict | None:
    results = get_json(f"{collector.url}/api/v1/drift?device=cam")
    if not results:
        return None
    return next(
        (d for d in results[0].get("sequential", []) if d["statistic"] == "input/image/mean"),
        None,
    )


def test_run_lengths_are_set_per_statistic_and_zero_switches_one_off() -> None:
    cfg = SequentialConfig(statistics={"input/*/nonfinite": 0, "output/*": 5000})
    det = SequentialDetector(cfg)
    assert det.level("input/x/nonfinite") is None
    assert det.level("output/p/top1_confidence") == alarm_level(5000, cfg.allowance)
    assert det.level("input/x/mean") == alarm_level(1000, cfg.allowance)
    assert alarm_level(5000, 0.5) > alarm_level(1000, 0.5)


def test_cusum_states_are_saved_and_replaced_in_both_databases(db_url: str) -> None:
    store = Store(db_url)
    try:
        key = ("f", "cam", "digits", "1")
        det = SequentialDetector(SequentialConfig())
        det.last_seq = 4
        det.states["input/x/mean"] = CusumState(1.5, 0.0, False, 2.0, 10.0, 3, 600.0, 0.12)
        store.save_sequential_states([(key, det.to_dict())])
        det.last_seq = 5
        store.save_sequential_states([(key, det.to_dict())])  # an upsert, not a second row
        back = SequentialDetector(SequentialConfig())
        saved = store.sequential_state(*key)
        assert saved is not None
        back.load(saved)
        assert back.last_seq == 5 and back.states == det.states
        assert store.sequential_state("f", "other", "digits", "1") is None
    finally:
        store.close()


def test_a_new_spool_epoch_is_folded_from_its_first_seq(windows: WindowMaker) -> None:
    """A re-imaged device counts seqs from 0 again: its new life is not taken for repeats."""
    reference = ReferenceModel.from_manifest(windows.manifest)
    det = SequentialDetector(SequentialConfig())

    def fold(seq: int, epoch: str) -> bool:
        c = Contribution.from_window(seq, windows.window("cam", seq).models[0], reference)[0]
        return det.observe(seq, *_sums(c), reference, epoch)

    assert all(fold(seq, "first-life") for seq in range(5))
    assert not fold(3, "first-life")  # a repeat within the life is skipped
    assert fold(0, "second-life") and fold(1, "second-life")
    saved = SequentialDetector(SequentialConfig())
    saved.load(det.to_dict())
    assert (saved.epoch, saved.last_seq) == ("second-life", 1)
