"""The router killed with SIGKILL: pending timers still fire, nothing is lost or doubled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import apply_lines, history, inbound, outbound_for, publish, router_answers, session_of
from support.servers import ServiceProcess
from support.timing import wait_for

from openlines import bus
from openlines.commands import SetStatus, call
from openlines.crashpoints import ENV as CRASH_ENV
from openlines.state import OperatorState, Session

LINES = """
[operators.anna]
name = "Anna"
[operators.boris]
name = "Boris"
[[lines]]
id = "support"
name = "Support"
channels = [{ channel = "webchat", account = "demo" }]
[lines.queue]
mode = "strict"
operators = ["anna", "boris"]
wait_seconds = 3
[lines.auto_replies]
welcome = "Welcome!"
"""


async def test_no_answer_timer_fires_after_a_kill_9_and_nothing_doubles(nc: Any, router_process: ServiceProcess) -> None:
    visitors = await _five_chats_offered_to_two_operators(nc, router_process, LINES, "k")

    async def all_offered() -> bool:
        sessions = [await session_of(nc, v) for v in visitors]
        return all(s is not None and s.status == "assigned" for s in sessions)

    await wait_for(all_offered, what="every chat offered")
    router_process.kill()  # with five no-answer timers pending
    for v in visitors:  # and messages arriving while it is down
        await publish(nc, inbound(v, "anyone?", "m2"))
    router_process.start()

    async def all_passed_on() -> bool:
        sessions = [await session_of(nc, v) for v in visitors]
        return all(s is not None and s.assignments >= 2 for s in sessions)

    await wait_for(all_passed_on, timeout=60, what="every unanswered offer passed on after the restart")

    async def transcripts() -> dict[str, list[str]] | None:
        seen: dict[str, list[str]] = {}
        for v in visitors:
            s = await session_of(nc, v)
            assert s is not None
            seen[v] = [h.text for h in await history(nc, s.id) if h.direction == "in"]
        return seen if all(len(t) >= 2 for t in seen.values()) else None

    # The messages sent while it was down wait for the killed replica's partition leases to expire.
    seen = await wait_for(transcripts, timeout=60, what="messages sent during the outage handled")
    for v in visitors:
        assert seen[v] == ["hello", "anyone?"], f"{v}: {seen[v]}"
        assert [o.text for o in await outbound_for(nc, v)] == ["Welcome!"]


async def test_a_nats_restart_with_timers_firing_does_not_stop_the_router(
    nc: Any, nats_server: Any, router_process: ServiceProcess
) -> None:
    lines = LINES.replace("wait_seconds = 3", "wait_seconds = 1")
    visitors = await _five_chats_offered_to_two_operators(nc, router_process, lines, "t")

    async def offered_at_least(n: int) -> bool:
        sessions = [await session_of(nc, v) for v in visitors]
        return all(s is not None and s.assignments >= n for s in sessions)

    # Nobody accepts: every second each chat's no-answer timer fires and passes it on.
    await wait_for(lambda: offered_at_least(2), timeout=30, what="no-answer timers firing")
    for _ in range(3):  # NATS goes away while timers are in the router's hands, and comes back
        nats_server.stop(kill=True)
        await asyncio.sleep(0.5)  # down for a moment
        nats_server.start()
        await wait_for(lambda: router_answers(nc), timeout=30, what="router answering commands again")
    assert router_process.exited() is None, "the router stopped when NATS went away"
    readable = [await wait_for(lambda v=v: session_of(nc, v), timeout=30, what="session readable") for v in visitors]
    before = {s.client_id: s.assignments for s in readable}

    async def passed_on_again() -> bool:
        sessions = [await session_of(nc, v) for v in visitors]
        return all(s is not None and s.assignments > before[s.client_id] for s in sessions)

    await wait_for(passed_on_again, timeout=60, what="no-answer timers firing again after the restarts")
    assert router_process.exited() is None


async def _five_chats_offered_to_two_operators(nc: Any, router: ServiceProcess, lines: str, prefix: str) -> list[str]:
    """Start the router with ``lines``, put anna and boris online, and have five visitors write."""
    await apply_lines(nc, lines)
    router.start()
    await wait_for(lambda: router_answers(nc), timeout=30, what="router answering commands")
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await call(nc, "status", SetStatus(operator_id="boris", status="online"))
    visitors = [f"{prefix}{i}" for i in range(5)]
    for v in visitors:
        await publish(nc, inbound(v, "hello", "m1"))
    return visitors


async def test_a_crash_right_after_an_offer_is_recorded_still_passes_it_on(nc: Any, router_process: ServiceProcess) -> None:
    """The router dies between writing "offered to Anna" and anything that follows (timer, event, transcript).

    The chat must not stay offered for ever to an operator who does not answer:
    after the restart the no-answer timer still passes it on, and the offer is in
    the trail once.
    """
    await apply_lines(nc, LINES)
    router_process.start(**{CRASH_ENV: "router.offer.recorded"})
    await wait_for(lambda: router_answers(nc), timeout=30, what="router answering commands")
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await publish(nc, inbound("c0", "hello", "m1"))
    await wait_for(lambda: router_process.exited() is not None, timeout=60, what="the router dying at the crash point")
    crashed = await session_of(nc, "c0")
    assert crashed is not None and crashed.status == "assigned" and crashed.operator_id == "anna", crashed

    router_process.start(**{CRASH_ENV: ""})

    async def passed_on() -> Session | None:
        s = await session_of(nc, "c0")
        return s if s is not None and s.assignments >= 2 else None

    after = await wait_for(passed_on, timeout=60, what="the unanswered offer passed on after the restart")
    assert after.assignments == 2, after  # anna let it pass once; boris is offline, so it waits for her again

    async def trail() -> list[str] | None:
        notes = [h.text for h in await history(nc, after.id) if h.direction == "system"]
        return notes if "Passed on: no answer" in notes else None

    notes = await wait_for(trail, timeout=30, what="the pass-on in the transcript")
    assert notes.count("Offered to Anna") >= 1, notes
    assert [o.text for o in await outbound_for(nc, "c0")] == ["Welcome!"]


@pytest.mark.parametrize("point", ["router.inbound.linked", "router.offer.claimed"])
async def test_a_crash_while_a_new_chat_starts_is_finished_by_the_redelivery_once(
    nc: Any, router_process: ServiceProcess, point: str
) -> None:
    """The router dies after the client record remembers the opening message (linked), or after
    Anna's capacity was claimed for it (claimed), before the offer is recorded.

    The chat waits in no queue then (a new chat with an operator free skips it): the
    redelivered message, already remembered, must still finish the start - one offer,
    one transcript line, one welcome, Anna's capacity taken once.
    """
    await apply_lines(nc, LINES)
    router_process.start(**{CRASH_ENV: point})
    await wait_for(lambda: router_answers(nc), timeout=30, what="router answering commands")
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await publish(nc, inbound("c1", "hello", "m1"))
    await wait_for(lambda: router_process.exited() is not None, timeout=60, what="the router dying at the crash point")
    crashed = await session_of(nc, "c1")
    assert crashed is not None and crashed.status == "waiting", crashed

    router_process.start(**{CRASH_ENV: ""})

    async def offered() -> Session | None:
        s = await session_of(nc, "c1")
        return s if s is not None and s.status == "assigned" else None

    after = await wait_for(offered, timeout=60, what="the chat offered after the restart")
    assert after.operator_id == "anna" and after.assignments == 1, after

    async def trail() -> list[Any] | None:
        hist = await history(nc, after.id)
        return hist if any(h.text == "Offered to Anna" for h in hist) else None

    hist = await wait_for(trail, timeout=30, what="the offer in the transcript")
    assert [h.text for h in hist if h.direction == "in"] == ["hello"]
    assert [h.text for h in hist if h.direction == "system"].count("Offered to Anna") == 1
    assert [o.text for o in await outbound_for(nc, "c1")] == ["Welcome!"]
    b = await bus.Buckets(nc.jetstream()).open()
    anna, _ = await bus.kv_get(b.operators, "anna", OperatorState)
    assert anna is not None and anna.sessions == [after.id], anna
