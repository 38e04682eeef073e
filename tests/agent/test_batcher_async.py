"""Event-loop callers of the batcher: asyncio futures resolved once per batch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgedl.agent.batcher import Batcher, DeadlineExceeded, ShuttingDown
from edgedl.agent.config import ModelConfig
from edgedl.agent.served import Observers, ServedModel


class Doubler:
    """A stand-in model: doubles its input, remembers every batch; can wait or fail."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[float]] = []
        self.gate = gate

    def __call__(self, worker: int, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self.gate is not None:
            self.gate.wait(10)
        x = inputs["x"]
        self.batches.append([float(v) for v in x[:, 0]])
        if (x < 0).any():
            raise RuntimeError("negative input")
        return {"y": x * 2}


def one(value: float) -> dict[str, Any]:
    return {"x": np.full((1, 3), value, dtype=np.float32)}


def far() -> float:
    return time.monotonic() + 60


async def queued_behind_a_busy_worker(
    batcher: Batcher, values: list[float]
) -> tuple[asyncio.Future[Any], list[asyncio.Future[Any]]]:
    """Occupy the worker with one request, then queue ``values`` so they form one batch."""
    loop = asyncio.get_running_loop()
    first = batcher.submit_async(one(100), 1, far(), loop)
    while batcher.depth:  # until the worker has taken it (and waits on the model's gate)
        await asyncio.sleep(0.005)
    futures = [batcher.submit_async(one(v), 1, far(), loop) for v in values]
    return first, futures


def run_gated(
    body: Callable[[Batcher, Doubler, threading.Event], Any], max_batch_size: int = 8
) -> Any:
    gate = threading.Event()
    model = Doubler(gate)
    batcher = Batcher(model, max_batch_size=max_batch_size)
    batcher.start()
    try:
        return asyncio.run(body(batcher, model, gate)), model
    finally:
        gate.set()
        batcher.stop()


def test_async_results_equal_the_thread_callers_and_share_one_batch() -> None:
    async def body(batcher: Batcher, model: Doubler, gate: threading.Event) -> Any:
        first, futures = await queued_behind_a_busy_worker(batcher, [1, 2, 3, 4])
        gate.set()
        return await first, await asyncio.gather(*futures)

    (first, results), model = run_gated(body)
    np.testing.assert_array_equal(first["y"], np.full((1, 3), 200.0))
    sync_model = Doubler()
    sync = Batcher(sync_model, max_batch_size=8)
    sync.start()
    try:
        expected = [sync.submit(one(v), 1, far()).result(10) for v in (1, 2, 3, 4)]
    finally:
        sync.stop()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got["y"], want["y"])
    assert model.batches == [[100.0], [1.0, 2.0, 3.0, 4.0]]


def test_a_cancelled_async_request_is_skipped_and_the_rest_of_its_batch_answered() -> None:
    async def body(batcher: Batcher, model: Doubler, gate: threading.Event) -> Any:
        first, futures = await queued_behind_a_busy_worker(batcher, [1, 2, 3])
        futures[1].cancel()  # the client went away
        gate.set()
        await first
        return [await futures[0], await futures[2]], futures[1].cancelled()

    (answers, cancelled), model = run_gated(body)
    assert cancelled
    assert [float(a["y"][0, 0]) for a in answers] == [2.0, 6.0]
    assert model.batches == [[100.0], [1.0, 3.0]]


def test_a_failing_batch_fails_each_of_its_async_requests_and_the_worker_goes_on() -> None:
    async def body(batcher: Batcher, model: Doubler, gate: threading.Event) -> Any:
        first, futures = await queued_behind_a_busy_worker(batcher, [1, -1, 2])
        gate.set()
        await first
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        after = await batcher.submit_async(one(5), 1, far(), asyncio.get_running_loop())
        return outcomes, after

    (outcomes, after), model = run_gated(body)
    assert all(isinstance(o, RuntimeError) and "negative" in str(o) for o in outcomes)
    assert float(after["y"][0, 0]) == 10.0
    assert model.batches == [[100.0], [1.0, -1.0, 2.0], [5.0]]


def test_an_async_request_past_its_deadline_fails_and_is_not_run() -> None:
    async def body(batcher: Batcher, model: Doubler, gate: threading.Event) -> Any:
        loop = asyncio.get_running_loop()
        first = batcher.submit_async(one(100), 1, far(), loop)
        late = batcher.submit_async(one(1), 1, time.monotonic() - 1, loop)
        gate.set()
        await first
        with pytest.raises(DeadlineExceeded):
            await late

    run_gated(body, max_batch_size=1)


def test_stop_without_drain_fails_queued_async_requests() -> None:
    gate = threading.Event()
    batcher = Batcher(Doubler(gate), max_batch_size=1)
    batcher.start()

    async def body() -> None:
        loop = asyncio.get_running_loop()
        running = batcher.submit_async(one(1), 1, far(), loop)
        while batcher.depth:  # until the worker has taken it (and waits on the gate)
            await asyncio.sleep(0.005)
        queued = batcher.submit_async(one(2), 1, far(), loop)
        stopper = threading.Thread(target=batcher.stop, kwargs={"drain": False})
        stopper.start()
        while batcher.depth:
            await asyncio.sleep(0.01)
        gate.set()
        with pytest.raises(ShuttingDown):
            await queued
        assert float((await running)["y"][0, 0]) == 2.0
        await asyncio.to_thread(stopper.join, 10)

    asyncio.run(body())


def test_served_model_submit_async_answers_like_infer(
    digits_bundle: Callable[..., Path],
) -> None:
    path = digits_bundle("onnx-fp32")
    model = ServedModel.load(path, ModelConfig(path=str(path), threads=1), Observers())
    model.start()
    try:
        name = model.manifest.inputs[0].name
        rng = np.random.default_rng(0)
        shape = [1, *model.manifest.inputs[0].shape[1:]]
        feeds = [{name: rng.uniform(0, 1, shape).astype(np.float32)} for _ in range(6)]

        async def ask() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(model.submit_async(f) for f in feeds)))

        answers = asyncio.run(ask())
        for feed, answer in zip(feeds, answers, strict=True):
            expected = model.infer(feed)
            assert answer.keys() == expected.keys()
            for key in expected:
                np.testing.assert_allclose(answer[key], expected[key], rtol=1e-5, atol=1e-6)
    finally:
        model.stop()
