"""Durable timers: no-answer reassignment, auto-close, line openings, SLA targets.

A timer is a message on ``ol.timer.<kind>.<target>`` in the work-queue
stream OL_TIMER. The router's consumer naks it with a delay until it is due,
then fires it and acks (which removes it). Because the timer lives in
JetStream, it fires after a router restart; because it carries a ``token`` of
the state it was set for, a timer that became stale (the chat was accepted,
the client wrote again) does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

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


async def schedule(js: JetStreamContext, timer: Timer) -> None:
    """Set a timer; one being set under the same id at that moment (10158) is waited for, not failed."""
    await bus.publish_stored(
        js, subjects.timer(timer.kind, timer.target), msgspec.json.encode(timer), headers={MSG_ID_HEADER: timer.id}
    )


async def consume(js: JetStreamContext, fire: Callable[[Timer], Awaitable[None]], durable: str, stop: asyncio.Event) -> None:
    """Fire timers as they fall due until ``stop``; a NATS outage only pauses it."""
    config = js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=subjects.timers_all(),
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=-1,  # every pending timer is "in flight" between its naks
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
