"""A budget of memory for the requests in flight, so that large requests cannot exhaust a device.

Each request reserves what decoding it is expected to cost (:func:`request_cost`) before its
body is read, and gives it back when it is answered:

* a request that alone costs more than the whole budget is refused at once
  (:class:`PayloadTooLarge`, 413), before anything is read or decoded;
* a request that does not fit next to the ones in flight waits, first come first served, for
  at most ``wait_s`` seconds, then gets :class:`MemoryBusy` (503 with ``Retry-After``);
  small requests (at most 1/64 of the budget) that fit go ahead of large ones waiting, so
  the agent keeps answering them while large ones queue;
* :meth:`Reservation.grow` takes more for what is only known later (a chunked or compressed
  body), and :meth:`Reservation.resize` sets what the answer needs once the outputs are
  known (usually less than decoding took, so it gives the rest back): more is taken at once
  or :class:`MemoryBusy`, never waiting, so two requests cannot wait on each other.

The budget lives on the event loop's thread and needs no lock.
"""

from __future__ import annotations

import asyncio
from collections import deque

from edgedl.errors import ServingError

MIB = 1024 * 1024

# What decoding costs, per byte of the body (measured in docs/performance.md, "Agent memory"):
# the body as read (its chunks, then the joined copy), a copy of each JSON number list and the
# array parsed from it (at most 4 bytes per 2 bytes of text for FP32, 8 for FP64).
JSON_BYTE_COST = 6
BINARY_BYTE_COST = 3
# JSON that is not a flat list of numbers becomes Python objects: up to about 16 bytes each.
OBJECT_BYTE_COST = 16
# What a JSON output costs per byte of its array (orjson's text and its growing buffer).
JSON_OUTPUT_BYTE_COST = 8
# Requests costing at most this share of the budget do not queue behind large ones.
SMALL_SHARE = 64


class PayloadTooLarge(ServingError):
    """The request is larger than a limit: ``server.max_request_bytes`` or the memory budget."""

    status = 413
    kind = "bad_input"


class MemoryBusy(ServingError):
    """The requests in flight hold the memory budget; the client should retry later."""

    status = 503
    kind = "queue_full"


def request_cost(json_bytes: int, binary_bytes: int, max_object_bytes: int) -> int:
    """The memory a request of ``json_bytes`` of JSON and ``binary_bytes`` of tensor data may take.

    ``max_object_bytes`` bounds the JSON that may be decoded into Python objects (everything but
    flat lists of numbers); its cost is counted in full.
    """
    objects = min(json_bytes, max_object_bytes)
    return (
        JSON_BYTE_COST * json_bytes + BINARY_BYTE_COST * binary_bytes + OBJECT_BYTE_COST * objects
    )


class MemoryBudget:
    """``capacity`` bytes shared by the requests in flight (see the module docstring)."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.reserved = 0
        self.peak = 0
        self.small = capacity // SMALL_SHARE
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def available(self) -> int:
        """The bytes not reserved by any request now."""
        return self.capacity - self.reserved

    async def reserve(self, nbytes: int, what: str) -> Reservation:
        """Take ``nbytes``, waiting at most ``wait_s`` for them; ``what`` names the request."""
        if nbytes > self.capacity:
            raise PayloadTooLarge(
                f"{what} needs about {_mib(nbytes)} of memory to decode, more than the "
                f"agent's request memory budget of {_mib(self.capacity)} "
                "(server.request_memory_bytes); send it in smaller requests"
            )
        if nbytes <= self.available and (not self._waiters or nbytes <= self.small):
            return self._take(nbytes, what)  # small requests pass the large ones waiting
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.wait_s)
        except asyncio.TimeoutError:
            if not waiter.done():
                self._waiters.remove(entry)
                self._wake()
                raise self._busy(what, nbytes) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._give_back(nbytes)  # granted while we were being cancelled
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise
        return Reservation(self, nbytes, what)

    def _take(self, nbytes: int, what: str) -> Reservation:
        self.reserved += nbytes
        self.peak = max(self.peak, self.reserved)
        return Reservation(self, nbytes, what)

    def _grow(self, nbytes: int, what: str) -> None:
        if nbytes > self.available:
            raise self._busy(what, nbytes)
        self.reserved += nbytes
        self.peak = max(self.peak, self.reserved)

    def _give_back(self, nbytes: int) -> None:
        self.reserved -= nbytes
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in order while the first one fits."""
        while self._waiters and self._waiters[0][0] <= self.available:
            nbytes, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.reserved += nbytes
            self.peak = max(self.peak, self.reserved)
            waiter.set_result(None)

    def _busy(self, what: str, nbytes: int) -> MemoryBusy:
        return MemoryBusy(
            f"the agent's request memory budget is in use ({_mib(self.reserved)} of "
            f"{_mib(self.capacity)} held by requests in flight; {what} needs {_mib(nbytes)}); "
            "retry later"
        )


class Reservation:
    """Bytes held from a :class:`MemoryBudget` until :meth:`release`."""

    def __init__(self, budget: MemoryBudget, nbytes: int, what: str) -> None:
        self.budget = budget
        self.nbytes = nbytes
        self.what = what

    def grow(self, nbytes: int) -> None:
        """Take ``nbytes`` more at once, or raise :class:`MemoryBusy` (413 if over the budget)."""
        if nbytes <= 0:
            return
        if self.nbytes + nbytes > self.budget.capacity:
            raise PayloadTooLarge(
                f"{self.what} needs more than the agent's request memory "
                f"budget of {_mib(self.budget.capacity)} (server.request_memory_bytes)"
            )
        self.budget._grow(nbytes, self.what)
        self.nbytes += nbytes

    def resize(self, nbytes: int) -> None:
        """Hold ``nbytes`` from now on: give back what is over, or :meth:`grow` to it."""
        if nbytes < self.nbytes:
            self.budget._give_back(self.nbytes - nbytes)
            self.nbytes = nbytes
        else:
            self.grow(nbytes - self.nbytes)

    def release(self) -> int:
        """Give everything back; returns how many bytes were held."""
        held, self.nbytes = self.nbytes, 0
        if held:
            self.budget._give_back(held)
        return held


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MiB"
