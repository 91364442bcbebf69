"""Durable timers: no-answer reassignment, auto-close, line openings, SLA targets.

A timer is a message scheduled in the server (decision 039): it waits on
``ol.timer.set.<kind>.<target>.<key>`` in the work-queue stream OL_TIMER, and
when it falls due nats-server publishes it to ``ol.timer.<kind>.<target>`` in
the same stream, where the router's consumer fires it and acks it (which
removes it). Because the timer lives in JetStream, it fires after a router
restart; because it carries a ``token`` of the state it was set for, a timer
that became stale (the chat was accepted, the client wrote again) does
nothing. One that arrives early (clocks apart, a handler's ``NotDue``) is
nak'd with the delay it still has.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal, get_args

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import Counter

from openlines import bus, subjects
from openlines.consume import Durable
from openlines.envelopes import MSG_ID_HEADER

log = logging.getLogger("router.timers")

FIRED = Counter("openlines_router_timers_fired_total", "Timers fired", ["kind"])

TimerKind = Literal["offer", "idle", "opening", "presence", "settle", "sla"]
KINDS: tuple[str, ...] = get_args(TimerKind)

# The headers of a scheduled message (ADR-51, nats-server 2.12+)
SCHEDULE_HEADER = "Nats-Schedule"
SCHEDULE_TARGET_HEADER = "Nats-Schedule-Target"


class Timer(msgspec.Struct, kw_only=True, frozen=True):
    kind: TimerKind
    target: str  # session id (offer, idle, settle, sla), line id (opening) or operator id (presence)
    due: float  # epoch seconds
    token: str  # the state the timer was set for

    @property
    def id(self) -> str:
        # The due time is part of the id: a timer set again for the same state after a
        # crash (an offer made once more) is a new timer, never dropped as a duplicate
        # of one that already fired as stale. Extra copies are harmless: stale ones do
        # nothing, early ones wait (NotDue).
        return f"timer:{self.kind}:{self.target}:{self.token}:{self.due:.3f}"


class NotDue(Exception):
    """Raised by a timer's handler when what it guards is not due yet: it comes back after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(f"not due for {delay:.3f} s")
        self.delay = delay


_decode = msgspec.json.Decoder(Timer)


def at(due: float) -> str:
    """``due`` (epoch seconds) as a schedule's one-shot time: ``@at`` and RFC 3339 in UTC to the millisecond."""
    when = datetime.datetime.fromtimestamp(due, datetime.UTC)
    return "@at " + when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def key(timer: Timer) -> str:
    """The timer's own subject token: every timer set waits on its own subject, none replaces another."""
    return hashlib.blake2s(timer.id.encode(), digest_size=10).hexdigest()


async def schedule(js: JetStreamContext, timer: Timer) -> None:
    """Set a timer; one being set under the same id at that moment (10158) is waited for, not failed.

    One message: the server keeps it and publishes it to the consumer's subject when due (one in the past
    at once). Set again under the same id within the stream's duplicate window, it is stored once.
    """
    await bus.publish_stored(
        js,
        subjects.timer_set(timer.kind, timer.target, key(timer)),
        msgspec.json.encode(timer),
        headers={
            MSG_ID_HEADER: timer.id,
            SCHEDULE_HEADER: at(timer.due),
            SCHEDULE_TARGET_HEADER: subjects.timer(timer.kind, timer.target),
        },
    )


async def consume(js: JetStreamContext, fire: Callable[[Timer], Awaitable[None]], durable: str, stop: asyncio.Event) -> None:
    """Fire timers as they fall due until ``stop``; a NATS outage only pauses it."""
    config = js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subjects=subjects.timers_due(KINDS),  # the timers that fell due, not the ones waiting
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=-1,  # a timer nak'd until it is due (early, NotDue) stays "in flight" between its naks
    )

    async def handle(m: Msg) -> None:
        await _handle(m, fire)

    await Durable(js, subjects.STREAM_TIMER, config, batch=256).run(handle, stop)


async def _handle(m: Msg, fire: Callable[[Timer], Awaitable[None]]) -> None:
    try:
        timer = _decode.decode(m.data)
    except msgspec.ValidationError:
        log.error("dropping malformed timer", extra={"subject": m.subject})
        await m.term()
        return
    wait = timer.due - time.time()
    if wait > 0.005:
        await m.nak(delay=wait)
        return
    try:
        await fire(timer)
    except NotDue as early:
        await m.nak(delay=early.delay)
        return
    except Exception as exc:
        log.warning("timer failed, retrying", extra={"timer": timer.id, "error": repr(exc)})
        await m.nak(delay=1.0)
        return
    await m.ack_sync()
    FIRED.labels(timer.kind).inc()
