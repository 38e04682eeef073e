"""The dynamic batcher on its own: batches, bounds, deadlines, failures, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from edgedl.agent.batcher import Batcher, DeadlineExceeded, QueueFull, ShuttingDown


class Doubler:
    """A stand-in model: doubles its input, remembers every batch it ran."""

    def __init__(self, fail_on_negative: bool = False, gate: threading.Event | None = None) -> None:
        self.batches: list[int] = []
        self.workers: set[int] = set()
        self.fail_on_negative = fail_on_negative
        self.gate = gate

    def __call__(self, worker: int, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self.gate is not None:
            self.gate.wait(10)
        x = inputs["x"]
        self.batches.append(x.shape[0])
        self.workers.add(worker)
        if self.fail_on_negative and (x < 0).any():
            raise RuntimeError("negative input")
        return {"y": x * 2}


def one(value: float, n: int = 1) -> dict[str, Any]:
    return {"x": np.full((n, 3), value, dtype=np.float32)}


def far() -> float:
    return time.monotonic() + 60


def test_queued_requests_run_together_up_to_max_batch_size_and_each_gets_its_own_rows() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=4, max_queue_delay_s=0.05, queue_size=64)
    futures = [batcher.submit(one(i), 1, far()) for i in range(10)]
    batcher.start()
    try:
        results = [f.result(10) for f in futures]
    finally:
        batcher.stop()
    assert model.batches == [4, 4, 2]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * i))


def test_a_lone_request_runs_once_the_queue_delay_passes() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=8, max_queue_delay_s=0.05)
    batcher.start()
    try:
        result = batcher.submit(one(3.0), 1, far()).result(10)
    finally:
        batcher.stop()
    np.testing.assert_array_equal(result["y"], np.full((1, 3), 6.0))
    assert model.batches == [1]


def test_requests_of_several_samples_are_split_back_by_their_sizes() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=16, max_queue_delay_s=0.05)
    futures = [batcher.submit(one(v, n), n, far()) for v, n in ((1, 3), (2, 1), (3, 5))]
    batcher.start()
    try:
        shapes = [f.result(10)["y"].shape[0] for f in futures]
        values = [float(f.result(10)["y"][0, 0]) for f in futures]
    finally:
        batcher.stop()
    assert model.batches == [9]
    assert shapes == [3, 1, 5]
    assert values == [2.0, 4.0, 6.0]


def test_a_request_larger_than_max_batch_size_runs_alone() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=2)
    futures = [batcher.submit(one(1, 5), 5, far()), batcher.submit(one(2), 1, far())]
    batcher.start()
    try:
        [f.result(10) for f in futures]
    finally:
        batcher.stop()
    assert model.batches == [5, 1]


def test_a_full_queue_refuses_at_once_and_what_was_queued_still_runs() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=1, queue_size=3)
    futures = [batcher.submit(one(i), 1, far()) for i in range(3)]
    with pytest.raises(QueueFull, match="3 requests queued") as info:
        batcher.submit(one(9), 1, far())
    assert info.value.status == 429
    batcher.start()
    try:
        assert [float(f.result(10)["y"][0, 0]) for f in futures] == [0.0, 2.0, 4.0]
        # Room again once the queue drained.
        assert float(batcher.submit(one(5), 1, far()).result(10)["y"][0, 0]) == 10.0
    finally:
        batcher.stop()


def test_a_request_past_its_deadline_fails_and_is_not_run() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=4)
    late = batcher.submit(one(1), 1, time.monotonic() + 0.01)
    on_time = batcher.submit(one(2), 1, far())
    time.sleep(0.05)
    batcher.start()
    try:
        with pytest.raises(DeadlineExceeded, match="deadline passed") as info:
            late.result(10)
        assert info.value.status == 504
        np.testing.assert_array_equal(on_time.result(10)["y"], np.full((1, 3), 4.0))
    finally:
        batcher.stop()
    assert model.batches == [1]


def test_a_cancelled_request_is_not_run() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=4)
    gone = batcher.submit(one(1), 1, far())
    kept = batcher.submit(one(2), 1, far())
    assert gone.cancel()
    batcher.start()
    try:
        kept.result(10)
    finally:
        batcher.stop()
    assert model.batches == [1]


def test_a_failing_batch_fails_only_its_requests_and_the_worker_goes_on() -> None:
    model = Doubler(fail_on_negative=True)
    batcher = Batcher(model, max_batch_size=2)
    bad = [batcher.submit(one(-1), 1, far()), batcher.submit(one(1), 1, far())]
    good = batcher.submit(one(3), 1, far())
    batcher.start()
    try:
        for f in bad:
            with pytest.raises(RuntimeError, match="negative input"):
                f.result(10)
        np.testing.assert_array_equal(good.result(10)["y"], np.full((1, 3), 6.0))
        assert batcher.running
        assert float(batcher.submit(one(4), 1, far()).result(10)["y"][0, 0]) == 8.0
    finally:
        batcher.stop()


def test_requests_whose_sample_shapes_differ_run_one_by_one() -> None:
    seen: list[tuple[int, ...]] = []

    def run(worker: int, inputs: Mapping[str, Any]) -> dict[str, Any]:
        seen.append(inputs["x"].shape)
        return {"y": inputs["x"].sum(axis=1)}

    batcher = Batcher(run, max_batch_size=8)
    short = batcher.submit({"x": np.ones((1, 3))}, 1, far())
    long = batcher.submit({"x": np.ones((1, 5))}, 1, far())
    batcher.start()
    try:
        assert float(short.result(10)["y"][0]) == 3.0
        assert float(long.result(10)["y"][0]) == 5.0
    finally:
        batcher.stop()
    assert seen == [(1, 3), (1, 5)]


def test_stop_drains_the_queue_then_refuses_new_requests() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=1)
    futures = [batcher.submit(one(i), 1, far()) for i in range(5)]
    batcher.start()
    batcher.stop(drain=True)
    assert [float(f.result(0)["y"][0, 0]) for f in futures] == [0.0, 2.0, 4.0, 6.0, 8.0]
    with pytest.raises(ShuttingDown) as info:
        batcher.submit(one(1), 1, far())
    assert info.value.status == 503
    assert not batcher.running


def test_stop_without_drain_fails_what_is_queued() -> None:
    gate = threading.Event()
    model = Doubler(gate=gate)
    batcher = Batcher(model, max_batch_size=1)
    batcher.start()
    running = batcher.submit(one(1), 1, far())
    while batcher.depth:  # wait until the worker holds the first request
        time.sleep(0.01)
    queued = batcher.submit(one(2), 1, far())
    stopper = threading.Thread(target=batcher.stop, kwargs={"drain": False})
    stopper.start()
    with pytest.raises(ShuttingDown):
        queued.result(10)
    gate.set()
    stopper.join(10)
    np.testing.assert_array_equal(running.result(10)["y"], np.full((1, 3), 2.0))


def test_several_workers_share_the_queue() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=2, workers=2)
    batcher.start()
    try:
        futures = [batcher.submit(one(i), 1, far()) for i in range(40)]
        values = [float(f.result(10)["y"][0, 0]) for f in futures]
    finally:
        batcher.stop()
    assert values == [2.0 * i for i in range(40)]
    assert model.workers <= {0, 1}
    assert sum(model.batches) == 40


def test_queue_depth_is_reported() -> None:
    depths: list[int] = []
    batcher = Batcher(Doubler(), max_batch_size=8, on_queue_depth=depths.append)
    futures = [batcher.submit(one(i), 1, far()) for i in range(3)]
    batcher.start()
    try:
        [f.result(10) for f in futures]
    finally:
        batcher.stop()
    assert depths[:3] == [1, 2, 3]
    assert depths[-1] == 0


def test_a_blocking_caller_runs_in_its_own_thread_when_the_model_is_idle() -> None:
    threads: list[str] = []

    def run(worker: int, inputs: Mapping[str, Any]) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"y": inputs["x"] + 1}

    batcher = Batcher(run, max_batch_size=4)
    batcher.start()
    try:
        future = batcher.call(one(1), 1, far())
        assert future.done()
        np.testing.assert_array_equal(future.result()["y"], np.full((1, 3), 2.0))
    finally:
        batcher.stop()
    assert threads == [threading.current_thread().name]


def test_blocking_callers_queue_while_the_model_is_busy_and_all_get_their_answer() -> None:
    model = Doubler()
    batcher = Batcher(model, max_batch_size=8, workers=2)
    batcher.start()
    results: dict[int, float] = {}

    def caller(i: int) -> None:
        for j in range(20):
            value = i * 100 + j
            results[value] = float(batcher.call(one(value), 1, far()).result(10)["y"][0, 0])

    try:
        callers = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(30)
    finally:
        batcher.stop()
    assert len(results) == 160
    assert all(v == 2 * k for k, v in results.items())
    assert sum(model.batches) == 160
    with pytest.raises(ShuttingDown):
        batcher.call(one(1), 1, far())
