"""The router killed with SIGKILL while SLA clocks run: the breach is still raised after the restart, once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import free_port, wait_for
from servers import ServiceProcess
from support import apply_lines, events, inbound, open_session, publish

from openlines import subjects
from openlines.commands import SetStatus, call
from openlines.state import Session

TARGET = 8  # seconds: long enough that the kill comes before it

LINES = f"""
[operators.anna]
name = "Anna"
[[lines]]
id = "support"
name = "Support"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
operators = ["anna"]
wait_seconds = 60
[lines.sla]
first_response_seconds = {TARGET}
"""


@pytest.fixture
def router_process(nats_server: Any, tmp_path: Any) -> Iterator[ServiceProcess]:
    env = {
        "OPENLINES_NATS_URL": nats_server.url,
        "OPENLINES_HTTP_PORT": str(free_port()),
        "OPENLINES_PARTITION_LEASE_SECONDS": "3",
    }
    r = ServiceProcess("router", "router", env, tmp_path)
    yield r
    r.stop()


async def session_of(nc: Any, visitor: str) -> Session | None:
    return await open_session(nc, "webchat", "demo", visitor, "support")


async def sla_timers(nc: Any, session_id: str) -> int:
    subject = subjects.timer("sla", session_id)
    info = await nc.jetstream().stream_info(subjects.STREAM_TIMER, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def test_sla_timer_fires_after_a_kill_9_and_the_breach_is_raised_once(nc: Any, router_process: ServiceProcess) -> None:
    await apply_lines(nc, LINES)
    router_process.start()
    await wait_for(lambda: _online(nc), timeout=30, what="the router answering commands")
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


async def _online(nc: Any) -> bool:
    try:
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    except Exception:
        return False
    return True
