"""Admission control at a gateway's edge: a bounded number of requests in flight.

Without a bound, a flood of webhooks or widget messages grows memory (one
request body, one task and one pending publish each) and latency without
limit. :class:`Admission` lets at most ``max_in_flight`` requests through at
once; ``max_waiting`` more may wait at most ``wait`` seconds for a slot, in
arrival order. Everything beyond is refused at once with
:class:`Overloaded`, which carries the ``Retry-After`` the edge answers with
(HTTP 503 + ``Retry-After``, or a widget ``error`` frame with ``retry_after``).

A refused request must change nothing: take the slot before doing anything
that publishes or buffers, and answer the refusal without publishing.

    admission = Admission("telegram", Limits(max_in_flight=256))
    try:
        async with admission.slot():
            ...  # read, normalise, publish
    except Overloaded as exc:
        return overloaded_response(exc)

The per-replica default (``DEFAULT_MAX_IN_FLIGHT``) comes from the P1
benchmark: one gateway replica publishes ~10,000-18,000 acked messages/s on
a 2-core machine with a few milliseconds per publish, i.e. a few dozen in
flight at full speed; 256 leaves room for NATS latency spikes while bounding
the memory held by requests to 256 bodies.
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import Counter, Gauge

from openlines.runner import json_error

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_MAX_WAITING = 256
DEFAULT_WAIT = 1.0
DEFAULT_RETRY_AFTER = 2

REFUSED = Counter(
    "openlines_admission_refused_total",
    "Requests refused because the edge was at capacity (answered 503 + Retry-After or an error frame with retry_after)",
    ["edge", "reason"],
)
IN_FLIGHT = Gauge("openlines_admission_in_flight", "Requests holding an admission slot", ["edge"])
WAITING = Gauge("openlines_admission_waiting", "Requests waiting for an admission slot", ["edge"])


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one replica's edge takes at once (from the service's settings)."""

    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_waiting: int = DEFAULT_MAX_WAITING  # 0 = refuse as soon as every slot is taken
    wait: float = DEFAULT_WAIT  # seconds a request may wait for a slot
    retry_after: int = DEFAULT_RETRY_AFTER  # seconds, the Retry-After of a refusal

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.max_waiting < 0 or self.wait < 0 or self.retry_after < 1:
            raise ValueError(
                "OPENLINES_MAX_IN_FLIGHT must be >= 1, OPENLINES_MAX_WAITING >= 0, "
                "OPENLINES_ADMISSION_WAIT >= 0 and OPENLINES_RETRY_AFTER >= 1"
            )


class Overloaded(Exception):
    """The request was refused before anything was done: the sender retries after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(f"at capacity ({reason}); retry after {retry_after} s")
        self.reason = reason  # "full" (no slot, queue full) or "wait_timeout" (waited, no slot came)
        self.retry_after = retry_after


class Admission:
    """A bounded in-flight counter with a short FIFO wait queue. One per edge and process."""

    def __init__(self, edge: str, limits: Limits) -> None:
        self.edge = edge
        self.limits = limits
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._refused = {reason: REFUSED.labels(edge, reason) for reason in ("full", "wait_timeout")}
        # Read when scraped: the hot path only moves an int.
        IN_FLIGHT.labels(edge).set_function(lambda: self.in_flight)
        WAITING.labels(edge).set_function(lambda: len(self._waiters))

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def refuse(self, reason: str) -> Overloaded:
        """Count a refusal decided by the edge itself (e.g. too many open sockets)."""
        counter = self._refused.get(reason)
        if counter is None:
            counter = self._refused[reason] = REFUSED.labels(self.edge, reason)
        counter.inc()
        return Overloaded(reason, self.limits.retry_after)

    def try_take(self) -> bool:
        """Take a slot if one is free and nobody waits for it (no await: the common case of :meth:`acquire`)."""
        if self.in_flight < self.limits.max_in_flight and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting in line if allowed; raise :class:`Overloaded` otherwise."""
        if self.try_take():
            return
        if len(self._waiters) >= self.limits.max_waiting or self.limits.wait <= 0:
            raise self.refuse("full")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.limits.wait):
                await waiter  # release() hands its slot over by resolving this future
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot came just as the wait ran out: keep it
            raise self.refuse("wait_timeout") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Give the slot back: to the first one waiting, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight stays the same
                return
        self.in_flight -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


def retry_after_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def overloaded_response(exc: Overloaded, detail: str = "server busy; retry later") -> web.Response:
    """The HTTP answer to a refused request: 503 with ``Retry-After``, in the shared error shape."""
    return json_error(503, "overloaded", f"{detail} (after {exc.retry_after} s)", headers=retry_after_header(exc.retry_after))
