"""The publish backstop of openlines.bus: one timer over every publish in flight cuts a stuck one off with
TimeoutError (as asyncio.timeout did), and leaves every other cancellation and every answer alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.timing import wait_for

from openlines.bus import Deadlines


async def _in_task(deadlines: Deadlines, at: float, work: Any) -> Any:
    task = asyncio.current_task()
    assert task is not None
    return await deadlines.within(task, at, work)


async def test_a_publish_stuck_past_its_deadline_raises_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    never: asyncio.Future[None] = loop.create_future()
    with pytest.raises(TimeoutError):
        await _in_task(deadlines, loop.time(), never)
    assert never.cancelled()  # the stuck wait itself was let go
    assert not deadlines._due


async def test_an_answer_before_the_deadline_is_returned_and_nothing_is_cut_off_later() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    answer: asyncio.Future[str] = loop.create_future()
    loop.call_soon(answer.set_result, "ack")
    assert await _in_task(deadlines, loop.time() + 3600, answer) == "ack"
    # The same task goes on waiting for something else: no late cancellation reaches it.
    other: asyncio.Future[str] = loop.create_future()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks < 5:
            loop.call_later(0.01, tick)
        else:
            other.set_result("still here")

    loop.call_later(0.01, tick)
    assert await other == "still here"


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    never: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(_in_task(deadlines, loop.time() + 3600, never))
    await wait_for(lambda: bool(deadlines._due), what="the publish in flight")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not deadlines._due


async def test_an_outside_cancellation_that_meets_the_deadline_is_not_swallowed() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=3600)  # checked by hand below, in the same turn as the cancellation
    never: asyncio.Future[None] = loop.create_future()
    task = asyncio.create_task(_in_task(deadlines, loop.time(), never))
    await wait_for(lambda: bool(deadlines._due), what="the publish in flight")
    task.cancel()  # the service stopping, in the same turn as the deadline passes
    deadlines._check()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_many_publishes_share_one_timer_and_each_meets_its_own_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, tick=0.01)
    stuck = [loop.create_future() for _ in range(3)]
    answered: asyncio.Future[str] = loop.create_future()
    tasks = [asyncio.create_task(_in_task(deadlines, loop.time(), f)) for f in stuck]
    ok = asyncio.create_task(_in_task(deadlines, loop.time() + 3600, answered))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert not ok.done()
    answered.set_result("ack")
    assert await ok == "ack"
    assert not deadlines._due
