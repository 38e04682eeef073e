"""Waiting for a servable's answer on the event loop, shared by the HTTP and gRPC APIs.

:func:`answer` submits a request's inputs to a :class:`~edgedl.agent.served.Servable` and
awaits its outputs within the request's deadline; :func:`off_loop` runs decoding or encoding
work on a worker thread when it is large enough to stall the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from numpy.typing import NDArray

from .batcher import DeadlineExceeded
from .request_budget import MIB
from .served import Servable, ServedModel, Tensors

OFF_LOOP_BYTES = 1 * MIB  # work on more bytes than this runs on a worker thread


async def answer(
    model: Servable, inputs: Mapping[str, NDArray[Any]], timeout_s: float | None
) -> Tensors:
    """The outputs of ``model`` for ``inputs``, waiting at most ``timeout_s`` (or the model's).

    Raises what :meth:`~edgedl.agent.served.Servable.submit` raises at once (bad input, a full
    queue, a stopping agent), :class:`~edgedl.agent.batcher.DeadlineExceeded` when the answer
    is late, and what running the model raised.
    """
    wait = timeout_s or model_timeout(model)
    if isinstance(model, ServedModel):
        return await _await(model.submit_async(inputs, timeout_s), wait)
    # a rollout's split or shadow pair: a thread-side future
    future = model.submit(inputs, timeout_s)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), wait)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"no answer within {wait * 1000:.0f} ms") from None


async def off_loop(work: Callable[[], Any], size: int) -> Any:
    """``work()``, on a worker thread when ``size`` bytes make it long enough to stall the loop."""
    if size <= OFF_LOOP_BYTES:
        return work()
    return await asyncio.get_running_loop().run_in_executor(None, work)


async def _await(future: asyncio.Future[Tensors], wait: float) -> Tensors:
    """Await a batcher's asyncio future for at most ``wait`` seconds.

    A timer that fails the future, not :func:`asyncio.wait_for`, which wraps it in one more
    future and callback per request. A request still queued when it fires is then skipped.
    """
    timer = future.get_loop().call_later(wait, _expire, future, wait)
    try:
        return await future
    finally:
        timer.cancel()


def _expire(future: asyncio.Future[Tensors], wait: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"no answer within {wait * 1000:.0f} ms"))


def model_timeout(model: Servable) -> float:
    """The default deadline of a servable's requests, in seconds."""
    config = getattr(model, "config", None)
    return float(getattr(config, "timeout_ms", 10_000.0)) / 1000.0
