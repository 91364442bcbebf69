"""The router killed with SIGKILL while SLA clocks run: the breach is still raised after the restart, once."""

from __future__ import annotations

from typing import Any

from support import apply_lines, events, inbound, publish, router_answers, session_of, sla_lines, sla_timers
from support.servers import ServiceProcess
from support.timing import wait_for

from openlines.commands import SetStatus, call
from openlines.state import Session

TARGET = 8  # seconds: long enough that the kill comes before it

LINES = sla_lines(TARGET)


async def test_sla_timer_fires_after_a_kill_9_and_the_breach_is_raised_once(nc: Any, router_process: ServiceProcess) -> None:
    await apply_lines(nc, LINES)
    router_process.start()
    await wait_for(lambda: router_answers(nc), timeout=30, what="the router answering commands")
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await publish(nc, inbound("before", "hello?", "m1"))

    async def timer_pending() -> Session | None:
        s = await session_of(nc, "before")
        return s if s is not None and await sla_timers(nc, s.id) > 0 else None

    s1 = await wait_for(timer_pending, timeout=30, what="the first-response timer set")
    router_process.kill()  # the clock's timer pending in OL_TIMER
    assert [e for e in await events(nc, "sla_breached") if e.session_id == s1.id] == []  # not raised before the kill
    await publish(nc, inbound("during", "anyone?", "m1"))  # and a chat opened while the router is down
    router_process.start()

    async def raised() -> dict[str, int] | None:
        found = [e.session_id for e in await events(nc, "sla_breached")]
        s2 = await session_of(nc, "during")
        if s2 is None or s1.id not in found or s2.id not in found:
            return None
        return {sid: found.count(sid) for sid in (s1.id, s2.id)}

    counts = await wait_for(raised, timeout=60, what="both breaches raised after the restart")
    assert set(counts.values()) == {1}
