"""Dynamic batching: a bounded queue of requests and worker threads that run them in batches.

No HTTP here: a :class:`Batcher` takes requests (a dict of arrays whose first axis is the
batch) and returns a :class:`concurrent.futures.Future` per request (:meth:`Batcher.submit`),
or an :class:`asyncio.Future` on the caller's event loop (:meth:`Batcher.submit_async`).

The algorithm, per worker thread (one per model instance, each with its own interpreter):

1. Wait until the queue holds a request.
2. If ``max_queue_delay_s`` > 0 and ``max_batch_size`` > 1, keep waiting until the queue
   holds ``max_batch_size`` samples or the oldest request has waited ``max_queue_delay_s``,
   whichever comes first. With a delay of 0 the batch is whatever queued while the workers
   were busy (greedy batching: no added latency when the agent is idle, fuller batches under
   load).
3. Take requests from the head of the queue, oldest first, while the batch stays within
   ``max_batch_size`` samples. A single request larger than that runs alone.
4. Fail (:class:`DeadlineExceeded`) the requests whose deadline has passed and skip those
   whose caller gave up (a cancelled future); neither is run.
5. Concatenate the rest along the first axis, run them with ``run_batch(worker, inputs)``
   and split the outputs back by each request's sample count. If ``run_batch`` raises, every
   request of that batch gets the exception and the worker goes on with the next batch.
6. Hand the asyncio futures of the batch their results with one
   ``loop.call_soon_threadsafe`` per batch and event loop, not one per request: each such
   call takes the loop's lock and writes to its wake-up pipe, and awaiting a
   :class:`concurrent.futures.Future` through :func:`asyncio.wrap_future` costs one per
   request plus the wrapping. An asyncio future that is already done when the batch is
   taken (cancelled: the client went away) is skipped like a cancelled concurrent one.

The queue is bounded by ``queue_size`` requests: :meth:`Batcher.submit` raises
:class:`QueueFull` at once instead of growing memory, and :class:`ShuttingDown` once
:meth:`Batcher.stop` has been called. ``stop(drain=True)`` runs what is queued before the
workers exit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgedl.errors import ServingError

log = logging.getLogger(__name__)

Array = NDArray[Any]
Tensors = dict[str, Array]
RunBatch = Callable[[int, Tensors], Mapping[str, Array]]


class QueueFull(ServingError):
    """The model's queue is full: the client should retry later."""

    status = 429
    kind = "queue_full"


class ShuttingDown(ServingError):
    """The agent is stopping and takes no new requests."""

    status = 503
    kind = "shutting_down"


class DeadlineExceeded(ServingError):
    """A request's deadline passed before it could run."""

    status = 504
    kind = "timeout"


@dataclass(slots=True)
class _Request:
    inputs: Tensors
    size: int
    enqueued: float
    deadline: float
    future: Future[Tensors] | None  # a thread caller's (submit, call)
    waiter: asyncio.Future[Tensors] | None = None  # an event loop's (submit_async)


# (asyncio future, outputs, error): settled on the future's loop by _settle
_Settlement = tuple["asyncio.Future[Tensors]", Tensors | None, BaseException | None]


class Batcher:
    """Queue requests for one model and run them in batches on ``workers`` threads."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 8,
        max_queue_delay_s: float = 0.0,
        queue_size: int = 256,
        workers: int = 1,
        on_queue_depth: Callable[[int], None] | None = None,
        name: str = "model",
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or workers < 1 or max_queue_delay_s < 0:
            raise ValueError("max_batch_size, queue_size and workers must be >= 1, delay >= 0")
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.queue_size = queue_size
        self.workers = workers
        self.name = name
        self._run_batch = run_batch
        self._on_queue_depth = on_queue_depth
        self._queue: deque[_Request] = deque()
        self._queued_samples = 0
        # `with self._lock` is the lock's own C context manager, cheaper per request than
        # the Condition's Python-level one; the Condition waits and notifies on the same lock.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._busy: set[int] = set()  # worker slots running a batch (or lent to a caller)
        # Workers blocked in a wait: a submit wakes one only then. Waking a thread costs
        # microseconds with the GIL held; a busy worker looks at the queue when it is done.
        self._waiting = 0

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not counting those running)."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """True while every worker thread is alive and :meth:`stop` has not been called."""
        return (
            bool(self._threads) and not self._stopping and all(t.is_alive() for t in self._threads)
        )

    def start(self) -> None:
        """Start the worker threads."""
        if self._threads:
            return
        for i in range(self.workers):
            thread = threading.Thread(
                target=self._work, args=(i,), name=f"edgedl-batcher-{self.name}-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no more requests; run (``drain``) or fail the queued ones; join the workers."""
        with self._lock:
            self._stopping = True
            dropped: list[_Request] = []
            if not drain:
                dropped = list(self._queue)
                self._queue.clear()
                self._queued_samples = 0
            self._cond.notify_all()
        settlements: list[_Settlement] = []
        for request in dropped:
            _fail(request, ShuttingDown("the agent is shutting down"), settlements)
        _deliver(settlements)
        for thread in self._threads:
            thread.join(timeout)

    def submit(self, inputs: Tensors, size: int, deadline: float) -> Future[Tensors]:
        """Queue one request of ``size`` samples to finish by ``deadline`` (time.monotonic).

        Raise :class:`QueueFull` when the queue holds ``queue_size`` requests and
        :class:`ShuttingDown` after :meth:`stop`.
        """
        future: Future[Tensors] = Future()
        self._enqueue(_Request(inputs, size, time.monotonic(), deadline, future))
        return future

    def submit_async(
        self, inputs: Tensors, size: int, deadline: float, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Tensors]:
        """Like :meth:`submit`, for a caller on ``loop``: return a future of that loop.

        Call it from the loop's thread. The future is resolved on the loop, one callback per
        batch for all of the batch's futures; cancel it to give up (the request is skipped
        if it has not run yet).
        """
        waiter: asyncio.Future[Tensors] = loop.create_future()
        self._enqueue(_Request(inputs, size, time.monotonic(), deadline, None, waiter))
        return waiter

    def _enqueue(self, request: _Request) -> None:
        size = request.size
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the agent is shutting down and takes no new requests")
            if len(self._queue) >= self.queue_size:
                raise QueueFull(
                    f"model {self.name!r} has {self.queue_size} requests queued; retry later"
                )
            self._queue.append(request)
            self._queued_samples += size
            depth = len(self._queue)
            if self._waiting:
                if self._busy:  # a waiting worker may be one whose slot is taken: wake all
                    self._cond.notify_all()
                else:
                    self._cond.notify()
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)

    def call(self, inputs: Tensors, size: int, deadline: float) -> Future[Tensors]:
        """Like :meth:`submit`, for a caller that will block on the result anyway.

        When nothing is queued and a worker slot is idle, the request runs at once in the
        caller's thread with that slot's interpreter: no hand-off to a worker thread, whose
        wake-up costs tens of microseconds (milliseconds on a loaded machine). Otherwise it
        is queued like any other. The returned future is done when it ran inline.
        """
        slot = None
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the agent is shutting down and takes no new requests")
            if not self._queue and self._threads:
                slot = next((i for i in range(self.workers) if i not in self._busy), None)
                if slot is not None:
                    self._busy.add(slot)
        if slot is None:
            return self.submit(inputs, size, deadline)
        future: Future[Tensors] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(dict(self._run_batch(slot, inputs)))
        except Exception as exc:
            future.set_exception(exc)
        finally:
            with self._lock:
                self._busy.discard(slot)
                if self._queue and self._waiting:
                    self._cond.notify_all()
        return future

    def _work(self, worker: int) -> None:
        while True:
            batch = self._next_batch(worker)
            if batch is None:
                return
            settlements: list[_Settlement] = []
            try:
                self._run(worker, batch, settlements)
            finally:
                with self._lock:
                    self._busy.discard(worker)
                _deliver(settlements)
            # Not held while waiting for the next batch: a large one would stay in memory.
            del batch, settlements

    def _next_batch(self, worker: int) -> list[_Request] | None:
        with self._lock:
            while True:
                while not self._queue or worker in self._busy:
                    if self._stopping and not self._queue:
                        return None
                    self._wait(None)
                if self.max_queue_delay_s > 0 and self.max_batch_size > 1:
                    flush_at = self._queue[0].enqueued + self.max_queue_delay_s
                    while self._queued_samples < self.max_batch_size and not self._stopping:
                        remaining = flush_at - time.monotonic()
                        if remaining <= 0:
                            break
                        self._wait(remaining)
                    if not self._queue or worker in self._busy:  # taken meanwhile
                        continue
                batch: list[_Request] = []
                total = 0
                while self._queue:
                    head = self._queue[0]
                    if batch and total + head.size > self.max_batch_size:
                        break
                    self._queue.popleft()
                    self._queued_samples -= head.size
                    batch.append(head)
                    total += head.size
                    if total >= self.max_batch_size:
                        break
                self._busy.add(worker)
                depth = len(self._queue)
                if self._queue and self._waiting:
                    self._cond.notify()  # let an idle worker take the rest
                break
        if self._on_queue_depth is not None:
            self._on_queue_depth(depth)
        return batch

    def _wait(self, timeout: float | None) -> None:
        self._waiting += 1  # under self._lock, like every read of it
        try:
            self._cond.wait(timeout)
        finally:
            self._waiting -= 1

    def _run(self, worker: int, batch: list[_Request], settlements: list[_Settlement]) -> None:
        now = time.monotonic()
        live: list[_Request] = []
        for request in batch:
            if request.future is not None:
                if not request.future.set_running_or_notify_cancel():
                    continue  # the caller gave up waiting
            elif request.waiter is not None and request.waiter.done():
                continue  # cancelled on its loop: the caller gave up waiting
            if now > request.deadline:
                _settle_one(
                    request,
                    None,
                    DeadlineExceeded(
                        f"request waited {1000 * (now - request.enqueued):.0f} ms in the queue "
                        "and its deadline passed before it could run"
                    ),
                    settlements,
                )
                continue
            live.append(request)
        if not live:
            return
        if len(live) > 1 and not _same_sample_shapes(live):
            for request in live:  # e.g. audio of different lengths: run them one by one
                self._run_live(worker, [request], settlements)
            return
        self._run_live(worker, live, settlements)

    def _run_live(self, worker: int, live: list[_Request], settlements: list[_Settlement]) -> None:
        settled = 0
        try:
            if len(live) == 1:
                outputs = self._run_batch(worker, live[0].inputs)
                _settle_one(live[0], dict(outputs), None, settlements)
                return
            names = live[0].inputs.keys()
            inputs = {k: np.concatenate([r.inputs[k] for r in live]) for k in names}
            outputs = self._run_batch(worker, inputs)
            start = 0
            for request in live:
                end = start + request.size
                result = {k: v[start:end] for k, v in outputs.items()}
                _settle_one(request, result, None, settlements)
                settled += 1
                start = end
        except BaseException as exc:
            for request in live[settled:]:
                if request.future is None or not request.future.done():
                    _settle_one(request, None, exc, settlements)
            if not isinstance(exc, Exception):
                raise


def _same_sample_shapes(requests: list[_Request]) -> bool:
    first = requests[0].inputs
    return all(r.inputs[k].shape[1:] == v.shape[1:] for r in requests[1:] for k, v in first.items())


def _settle_one(
    request: _Request,
    result: Tensors | None,
    exc: BaseException | None,
    settlements: list[_Settlement],
) -> None:
    """Resolve a thread caller's future now; note an event loop's for :func:`_deliver`."""
    future = request.future
    if future is not None:
        if exc is None:
            future.set_result(result)  # type: ignore[arg-type]
        else:
            future.set_exception(exc)
    elif request.waiter is not None:
        settlements.append((request.waiter, result, exc))


def _fail(request: _Request, exc: Exception, settlements: list[_Settlement]) -> None:
    if request.future is None or request.future.set_running_or_notify_cancel():
        _settle_one(request, None, exc, settlements)


def _deliver(settlements: list[_Settlement]) -> None:
    """Hand every event loop its futures' outcomes in one thread-safe call per loop."""
    if not settlements:
        return
    first = settlements[0][0].get_loop()
    if all(s[0].get_loop() is first for s in settlements):
        by_loop = {first: settlements}
    else:
        by_loop = {}
        for s in settlements:
            by_loop.setdefault(s[0].get_loop(), []).append(s)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # the loop is closed: nobody awaits these futures any more
            log.debug("event loop closed before %d results could be handed over", len(items))


def _settle(settlements: list[_Settlement]) -> None:
    """On the futures' loop: set each outcome, skipping futures already done (cancelled)."""
    for waiter, result, exc in settlements:
        if waiter.done():
            continue
        if exc is None:
            waiter.set_result(result)  # type: ignore[arg-type]
        else:
            waiter.set_exception(exc)
