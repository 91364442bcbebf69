"""One router replica handles operator commands side by side: a command stuck on a lost write does not hold
the next command of its kind (nats-py hands a subscription's messages to its callback one at a time, so a
close waiting on a NATS fault used to hold every other operator's close on that replica)."""

from __future__ import annotations

import asyncio
from typing import Any

from peers.natsproxy import NatsProxy
from support import apply_lines, inbound, line_block, publish, running_router, session_of
from support.timing import wait_for

from openlines.commands import Close, CommandFailed, Result, SetStatus, call
from openlines.state import Session

OPS = """
[operators.anna]
name = "Anna"
[operators.boris]
name = "Boris"
"""


async def _assigned(nc: Any, visitor: str) -> Session:
    async def probe() -> Session | None:
        s = await session_of(nc, visitor)
        return s if s is not None and s.status == "assigned" and s.operator_id else None

    return await wait_for(probe, timeout=15, what=f"{visitor}'s chat offered")


async def test_a_close_stuck_on_a_lost_write_does_not_hold_another_operators_close(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, OPS + line_block("support", account="demo", operators='"anna", "boris"'))
    proxy = NatsProxy(nats_server.port)
    await proxy.start()
    try:
        async with running_router(proxy.url):  # one replica: every command goes to it
            for op in ("anna", "boris"):
                await call(nc, "status", SetStatus(operator_id=op, status="online"))
            await publish(nc, inbound("v1", "hello", "m1"))
            first = await _assigned(nc, "v1")
            await publish(nc, inbound("v2", "hello", "m1"))
            second = await _assigned(nc, "v2")

            # The first close's write of its chat never reaches the server: it waits for its time-out.
            lost = proxy.drop(f"$KV.ol-sessions.{first.id}")
            stuck = asyncio.create_task(call(nc, "close", Close(operator_id=first.operator_id, session_id=first.id)))
            await asyncio.wait_for(lost.done.wait(), timeout=30)
            answer = await call(nc, "close", Close(operator_id=second.operator_id, session_id=second.id))
            assert answer.session is not None and answer.session.status == "closed"
            assert not stuck.done(), "the other close was answered only after the stuck one"

            # The stuck one ends too: closed by its retry, or refused as unavailable (the page asks again).
            try:
                result: Result = await stuck
                assert result.session is not None and result.session.status == "closed"
            except (CommandFailed, TimeoutError):
                again = await call(nc, "close", Close(operator_id=first.operator_id, session_id=first.id))
                assert again.session is not None and again.session.status == "closed"
    finally:
        await proxy.stop()
