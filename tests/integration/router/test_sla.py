"""SLA targets with the real router on a real nats-server: a chat past its first-response or
next-response target raises one ``sla_breached`` event; an answer in time, or a close, raises none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError
from support import (
    apply_lines,
    events,
    held_session,
    history,
    inbound,
    line_block,
    operators_block,
    publish,
    running_router,
    sla_lines,
    sla_timers,
)
from support.timing import wait_for

from openlines import bus, subjects
from openlines.commands import Close, Reply, SetStatus, call
from openlines.envelopes import SessionEvent
from router.core.sla import Clock
from router.effects import Effects
from router.lines_cache import LinesCache
from router.sla import SlaWatch

TARGET = 2  # seconds

LINES = sla_lines(TARGET, next_response=TARGET, welcome="Welcome!")


async def caught_up(nc: Any) -> bool:
    """The router's SLA reader has handled every transcript entry so far."""
    info = await nc.jetstream().consumer_info(subjects.STREAM_HIST, "router-sla")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _in_transcript(nc: Any, session_id: str, text: str) -> bool:
    return any(h.text == text for h in await history(nc, session_id))


async def breaches(nc: Any, session_id: str) -> list[SessionEvent]:
    return [e for e in await events(nc, "sla_breached") if e.session_id == session_id]


async def timer_set(nc: Any, session_id: str) -> bool:
    return await sla_timers(nc, session_id) > 0


async def timer_gone(nc: Any, session_id: str) -> bool:
    return await sla_timers(nc, session_id) == 0


async def test_unanswered_first_message_raises_one_sla_breached_for_the_line(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v1", "hello?", "m1"))
        s = await held_session(nc, "v1")
        found = await wait_for(lambda: breaches(nc, s.id), timeout=30, what="sla_breached")
        await wait_for(lambda: timer_gone(nc, s.id), what="the SLA timer done")
        await publish(nc, inbound("v1", "still there?", "m2"))  # more waiting raises no second alert for the same clock
        await wait_for(lambda: _in_transcript(nc, s.id, "still there?"), what="the second message recorded")
        await wait_for(lambda: caught_up(nc), what="the SLA clocks up to date")
        assert await sla_timers(nc, s.id) == 0
        found = await breaches(nc, s.id)
    assert len(found) == 1
    e = found[0]
    assert (e.kind, e.line_id, e.session_id, e.operator_id) == ("sla_breached", "support", s.id, "anna")
    assert e.reason.startswith(f"first response target {TARGET} s passed by ")


async def answered_in_time(nc: Any, visitor: str) -> Any:
    """A client's first message answered by Anna before its target; returns the session once its timer is gone."""
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await publish(nc, inbound(visitor, "hello?", "m1"))
    s = await held_session(nc, visitor)
    await wait_for(lambda: timer_set(nc, s.id), what="the first-response timer set")
    await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="Hi!", client_msg_id="r1"))
    # The timer comes due after the answer, finds its clock stopped and is removed, raising nothing.
    await wait_for(lambda: timer_gone(nc, s.id), timeout=30, what="the timer fired as stale")
    return s


async def test_operator_reply_in_time_raises_nothing(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url):
        s = await answered_in_time(nc, "v2")
        assert await breaches(nc, s.id) == []


async def test_client_writing_after_an_operator_starts_the_next_response_clock(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v3", "hello?", "m1"))
        s = await held_session(nc, "v3")
        await call(nc, "reply", Reply(operator_id="anna", session_id=s.id, text="Hi! How can I help?", client_msg_id="r1"))
        await wait_for(lambda: timer_gone(nc, s.id), timeout=30, what="the first-response timer fired as stale")
        await publish(nc, inbound("v3", "my order is late", "m2"))
        found = await wait_for(lambda: breaches(nc, s.id), timeout=30, what="sla_breached for the next response")
    assert len(found) == 1
    assert found[0].reason.startswith(f"next response target {TARGET} s passed by ")
    assert found[0].operator_id == "anna"


async def test_closed_session_stops_its_clock(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v4", "hello?", "m1"))
        s = await held_session(nc, "v4")
        await wait_for(lambda: timer_set(nc, s.id), what="the first-response timer set")
        await call(nc, "accept", _accept(s.id))
        await call(nc, "close", Close(operator_id="anna", session_id=s.id))
        await wait_for(lambda: timer_gone(nc, s.id), timeout=30, what="the timer fired on a closed session")
        assert await breaches(nc, s.id) == []
        kv = await nc.jetstream().key_value(subjects.KV_SLA)

        async def clock_dropped() -> bool:
            clock, _ = await bus.kv_get(kv, s.id, dict)
            return clock is None

        await wait_for(clock_dropped, what="the closed session's clock removed")


async def test_a_transcript_entry_taken_again_after_a_lost_ack_changes_nothing(nc: Any, nats_server: Any) -> None:
    """The watch does not wait for its acks: one lost on the way brings its entry back after ack_wait, behind
    newer ones. A client message taken again after the operator's answer must not start its clock again."""
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url):
        s = await answered_in_time(nc, "v5")
        await wait_for(lambda: caught_up(nc), what="the SLA clocks up to date")
    js = nc.jetstream()
    seq, data = await _client_entry(nc, s.id, b'"hello?"')
    sla_kv = await js.key_value(subjects.KV_SLA)
    before = await sla_kv.get(s.id)
    async with _watch(nc) as (watch, _):
        await watch.entry(data, seq)  # as a redelivery brings it: same data, same stream sequence
    after = await sla_kv.get(s.id)
    assert (after.revision, after.value) == (before.revision, before.value)
    assert msgspec.json.decode(after.value, type=Clock).answered
    assert await sla_timers(nc, s.id) == 0
    assert await breaches(nc, s.id) == []


async def test_targets_applied_while_the_router_runs_start_clocks(nc: Any, nats_server: Any) -> None:
    """While no line has targets the watch skips entries unread; targets applied later count from the next entry."""
    await apply_lines(nc, operators_block("anna") + line_block(operators='"anna"', queue="wait_seconds = 60"))
    async with running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        await publish(nc, inbound("v6", "hello?", "m1"))
        s = await held_session(nc, "v6")
        await wait_for(lambda: caught_up(nc), what="the SLA watch past the entry")
    seq, data = await _client_entry(nc, s.id, b'"hello?"')
    sla_kv = await nc.jetstream().key_value(subjects.KV_SLA)
    async with _watch(nc) as (watch, lines):
        await watch.entry(data, seq)
        with pytest.raises(KeyNotFoundError):
            await sla_kv.get(s.id)
        await apply_lines(nc, LINES)

        async def targets_loaded() -> bool:
            return lines.lines["support"].sla.first_response_seconds == TARGET

        await wait_for(targets_loaded, what="the targets in the watch's lines")
        await watch.entry(data, seq)
    clock = msgspec.json.decode((await sla_kv.get(s.id)).value, type=Clock)
    assert (clock.target, clock.answered, clock.seq) == ("first_response", False, seq)
    assert await sla_timers(nc, s.id) == 1


async def _client_entry(nc: Any, session_id: str, text: bytes) -> tuple[int, bytes]:
    """The stream sequence and data of the session's transcript entry holding ``text``."""
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_HIST, subjects.history(session_id))
    return next((seq, data) for seq, data in rows if text in data)


@contextlib.asynccontextmanager
async def _watch(nc: Any) -> AsyncIterator[tuple[SlaWatch, LinesCache]]:
    """The router's SLA watch on its own, on the lines as they are in KV, to hand it entries directly."""
    js = nc.jetstream()
    buckets = await bus.Buckets(js).open()
    lines = LinesCache(buckets.lines)
    loading = asyncio.create_task(lines.run())
    try:
        await asyncio.wait_for(lines.loaded.wait(), timeout=10)
        yield await SlaWatch(js, buckets, lines, Effects(js, nc)).open(), lines
    finally:
        loading.cancel()


def _accept(session_id: str) -> Any:
    from openlines.commands import Accept

    return Accept(operator_id="anna", session_id=session_id)
