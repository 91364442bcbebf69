"""openlines.taskdump: each task's await chain, tasks waiting at one place counted as one stack."""

from __future__ import annotations

import asyncio

from openlines import taskdump


async def test_tasks_waiting_at_one_place_are_one_stack_and_each_chain_runs_through_every_await() -> None:
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    same = [asyncio.create_task(outer(), name=f"same-{i}") for i in range(3)]
    odd = asyncio.create_task(asyncio.sleep(3600), name="odd")
    await asyncio.sleep(0)  # one turn of the loop: each task runs to its first await
    try:
        found = taskdump.stacks({*same, odd})
        assert [(s.count, s.names) for s in found] == [(3, ["same-0", "same-1", "same-2"]), (1, ["odd"])]
        chain = found[0].text
        # outermost first, innermost last: the task's coroutine, what it awaits, down to asyncio's own wait
        assert chain.index(", in outer") < chain.index(", in inner") < chain.index(", in wait")
        assert chain.endswith("await fut")
        assert "wait_for=<Future pending" in found[0].example and "same-0" in found[0].example
        assert ", in sleep" in found[1].text
    finally:
        gate.set()
        odd.cancel()
        await asyncio.gather(*same, odd, return_exceptions=True)
