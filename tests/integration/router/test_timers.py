"""Durable timers wait in nats-server as scheduled messages (decision 039), against a real nats-server.

Before, a timer was delivered to the router at once and nak'd until due: three messages per timer set, and
every pending timer held in the consumer's hands. Now the server keeps it and delivers it when it falls due.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from nats.js import api as js_api
from support import apply_lines, events, inbound, line_block, operators_block, pending_timers, publish, running_router, session_of
from support.timing import wait_for

from openlines import bus, subjects
from openlines.commands import SetStatus, call
from openlines.envelopes import MSG_ID_HEADER
from openlines.state import Session
from router.timers import KINDS, Timer, schedule

WAIT = 3  # the line's wait_seconds: long enough to look at the timer while it waits
DURABLE = "router-timers"  # the router's timer consumer (its timer_consumer setting's default)


async def consumer_in_hand(nc: Any) -> tuple[int, int]:
    """The router's timer consumer: messages delivered and not yet acked, and messages not yet delivered."""
    info = await nc.jetstream().consumer_info(subjects.STREAM_TIMER, DURABLE)
    return info.num_ack_pending, info.num_pending


async def test_a_no_answer_timer_waits_in_the_server_and_passes_the_chat_on_when_due(nc: Any, nats_server: Any) -> None:
    await apply_lines(
        nc, operators_block("anna", "boris") + line_block(operators='"anna", "boris"', queue=f"wait_seconds = {WAIT}")
    )
    async with running_router(nats_server.url):
        for op in ("anna", "boris"):
            await call(nc, "status", SetStatus(operator_id=op, status="online"))
        await publish(nc, inbound("v", "hello?", "m1"))

        async def offered() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.operator_id and await pending_timers(nc, "offer", s.id) else None

        first = await wait_for(offered, timeout=15, what="the offer and its no-answer timer")
        # It waits in the server on its own subject; the router holds nothing for it.
        waiting = (
            await nc.jetstream().stream_info(subjects.STREAM_TIMER, subjects_filter=subjects.timers_set("offer", first.id))
        ).state
        assert sum((waiting.subjects or {}).values()) == 1, waiting.subjects
        assert await consumer_in_hand(nc) == (0, 0)

        async def moved() -> Session | None:
            s = await session_of(nc, "v")
            return s if s is not None and s.operator_id not in ("", first.operator_id) else None

        await wait_for(moved, timeout=15, what="offer passed on")
        (offer,) = [e for e in await events(nc, "session_assigned") if e.operator_id == first.operator_id]
        (declined,) = await events(nc, "offer_declined")
        assert declined.reason == "no answer"
        # Not before it was due: the declined event comes at least wait_seconds after the offer.
        assert (declined.at - offer.at).total_seconds() >= WAIT - 0.05


async def test_timers_set_before_the_upgrade_still_fire_and_new_ones_wait_in_the_server(nc: Any, nats_server: Any) -> None:
    """A deployment upgraded with timers pending: OL_TIMER as it was made before decision 039 (no scheduled
    messages), the router's consumer on every ``ol.timer`` subject, a timer in the old form waiting in it."""
    js = nc.jetstream()
    await js.delete_stream(subjects.STREAM_TIMER)
    old = bus.stream_config(subjects.STREAM_TIMER)
    old.allow_msg_schedules = None
    await js.add_stream(old)
    durable = DURABLE
    await js.add_consumer(
        subjects.STREAM_TIMER,
        js_api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=f"{subjects.TIMER_ROOT}.>",
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,
            max_ack_pending=-1,
        ),
    )
    before = Timer(kind="settle", target="s-before", due=time.time() + 1, token="t")
    await js.publish(subjects.timer("settle", "s-before"), msgspec.json.encode(before), headers={MSG_ID_HEADER: before.id})

    # The upgrade's one-shot (`openlines bootstrap` as admin: services may not change streams) comes first.
    await bus.bootstrap(js)
    async with running_router(nats_server.url):  # its consumer takes the new filter when it starts
        info = await js.stream_info(subjects.STREAM_TIMER)
        assert info.config.allow_msg_schedules
        consumer = await js.consumer_info(subjects.STREAM_TIMER, durable)
        assert sorted(consumer.config.filter_subjects or []) == sorted(subjects.timers_due(KINDS))
        after = Timer(kind="settle", target="s-after", due=time.time() + 1, token="t")
        await schedule(js, after)
        assert await pending_timers(nc, "settle", "s-after") == 1

        async def all_fired() -> bool:
            return (await js.stream_info(subjects.STREAM_TIMER)).state.messages == 0

        await wait_for(all_fired, timeout=15, what="the old timer and the new one fired (acked, so removed)")


async def test_a_timer_set_twice_under_one_id_waits_once(nc: Any) -> None:
    """A step redone after a crash sets the same timer again: the stream's duplicate window keeps one copy."""
    js = nc.jetstream()
    timer = Timer(kind="idle", target="s1", due=time.time() + 3600, token="t")
    await schedule(js, timer)
    await schedule(js, timer)
    assert await pending_timers(nc, "idle", "s1") == 1
    # Another due time is another timer (decision 010's settle timers rely on it): both wait.
    await schedule(js, Timer(kind="idle", target="s1", due=timer.due + 1, token="t"))
    assert await pending_timers(nc, "idle", "s1") == 2


@pytest.mark.parametrize("kind", ["set"])
def test_the_waiting_subjects_name_is_no_timer_kind(kind: str) -> None:
    with pytest.raises(subjects.BadToken):
        subjects.timer(kind, "x")
    assert kind not in KINDS
