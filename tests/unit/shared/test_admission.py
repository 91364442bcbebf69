"""The admission limiter: a bounded number in flight, a short FIFO wait, clean refusals."""

from __future__ import annotations

import asyncio

import pytest
from support.timing import wait_for

from openlines.admission import Admission, Limits, Overloaded, overloaded_response


async def test_beyond_the_slots_and_the_queue_a_request_is_refused_at_once() -> None:
    adm = Admission("unit-full", Limits(max_in_flight=2, max_waiting=0, wait=1.0, retry_after=3))
    await adm.acquire()
    await adm.acquire()
    with pytest.raises(Overloaded) as refused:
        await adm.acquire()
    assert refused.value.reason == "full" and refused.value.retry_after == 3
    assert adm.in_flight == 2
    adm.release()
    await adm.acquire()  # a released slot is usable again
    assert adm.in_flight == 2


async def test_waiters_get_released_slots_in_arrival_order() -> None:
    adm = Admission("unit-fifo", Limits(max_in_flight=1, max_waiting=3, wait=30.0))
    await adm.acquire()
    order: list[int] = []

    async def one(i: int) -> None:
        async with adm.slot():
            order.append(i)

    tasks = [asyncio.create_task(one(i)) for i in range(3)]
    await wait_for(lambda: adm.waiting == 3, what="three waiters")
    with pytest.raises(Overloaded):  # the queue is full too
        await adm.acquire()
    adm.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert adm.in_flight == 0 and adm.waiting == 0


async def test_a_waiter_whose_wait_runs_out_is_refused_and_leaves_the_queue() -> None:
    adm = Admission("unit-timeout", Limits(max_in_flight=1, max_waiting=1, wait=0.05))
    await adm.acquire()
    with pytest.raises(Overloaded) as refused:
        await adm.acquire()
    assert refused.value.reason == "wait_timeout"
    assert adm.waiting == 0 and adm.in_flight == 1
    adm.release()
    assert adm.in_flight == 0


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    adm = Admission("unit-cancel", Limits(max_in_flight=1, max_waiting=2, wait=30.0))
    await adm.acquire()
    waiting = asyncio.create_task(adm.acquire())
    await wait_for(lambda: adm.waiting == 1, what="one waiter")
    adm.release()  # hands the slot to the waiter...
    waiting.cancel()  # ...which is cancelled before it runs: the slot must come back
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert adm.in_flight == 0 and adm.waiting == 0


def test_the_http_refusal_is_a_503_with_retry_after() -> None:
    resp = overloaded_response(Overloaded("full", 7))
    assert resp.status == 503 and resp.headers["Retry-After"] == "7"


@pytest.mark.parametrize("bad", [{"max_in_flight": 0}, {"max_waiting": -1}, {"wait": -1.0}, {"retry_after": 0}])
def test_nonsense_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="OPENLINES_MAX_IN_FLIGHT"):
        Limits(**bad)  # type: ignore[arg-type]


async def test_try_take_takes_a_free_slot_without_waiting_and_never_jumps_the_queue() -> None:
    adm = Admission("unit-try", Limits(max_in_flight=1, max_waiting=2, wait=30.0))
    assert adm.try_take() and adm.in_flight == 1
    assert not adm.try_take() and adm.in_flight == 1  # full: no slot, and nothing counted
    waiter = asyncio.create_task(adm.acquire())
    await wait_for(lambda: adm.waiting == 1, what="one waiter")
    adm.release()  # handed to the waiter, not back to the pool
    await waiter
    assert not adm.try_take() and adm.in_flight == 1
    adm.release()
    assert adm.in_flight == 0 and adm.try_take()
