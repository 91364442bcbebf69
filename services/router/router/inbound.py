"""The inbound consumer: OL_IN messages handled one at a time, in stream order,
acked only after their effects are durable.

Order matters more than speed here: a client's second message must never be
handled before their first. So the consumer allows one unacknowledged
message at a time, and a message that fails is retried *in place* (not
nak'ed to the back) — forever while the failure is NATS being unreachable,
a few times for anything else before it is dead-lettered with the reason.
After a crash the unacknowledged message is redelivered after ``ack_wait``,
before anything newer. ``ack_wait`` is short (about the partition lease, so a
replica killed -9 holds up its partitions no longer than that); a message
that takes longer - a loaded machine, NATS away and the message retried in
place - stays ours by an in-progress heartbeat every third of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from prometheus_client import Counter, Histogram

from openlines import subjects
from openlines.consume import Durable, dead_letter
from openlines.envelopes import Inbound
from router.effects import EVENTS
from router.engine import Engine

log = logging.getLogger("router.inbound")

HANDLED = Counter("openlines_router_inbound_total", "Inbound messages handled", ["result"])
LATENCY = Histogram("openlines_router_inbound_seconds", "Time to handle one inbound message")

# Failures that say "the bus is not there right now", not "this message is bad".
TRANSIENT = (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError, ConnectionClosedError, TimeoutError)
MAX_OTHER_FAILURES = 5
# A cluster node killed -9 leaves its streams without a leader for the server's election timeout
# (4-9 s in nats-server); retried at this pace, routing carries on within half a second of the new
# leader, instead of after a back-off grown to seconds meanwhile. One message per partition: cheap.
TRANSIENT_RETRY_MAX = 0.5

_decode = msgspec.json.Decoder(Inbound)


async def consume(
    js: JetStreamContext, engine: Engine, *, durable: str, filter_subject: str, ack_wait: float, stop: asyncio.Event
) -> None:
    config = js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=1,  # strict order: nothing newer is delivered while one is in hand
        deliver_policy=js_api.DeliverPolicy.ALL,
        filter_subject=filter_subject,
    )

    async def handle(m: Msg) -> None:
        await _handle_kept(engine, m, stop, ack_wait)

    await Durable(js, subjects.STREAM_IN, config).run(handle, stop)


async def _handle_kept(engine: Engine, m: Msg, stop: asyncio.Event, ack_wait: float) -> None:
    """``_handle``, with the message kept ours (in-progress heartbeats) for as long as it takes."""

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(ack_wait / 3)
            with contextlib.suppress(Exception):  # NATS away: the retry in place goes on; redelivery is harmless
                await m.in_progress()

    beat = asyncio.create_task(heartbeat(), name="inbound-in-progress")
    try:
        await _handle(engine, m, stop)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def _handle(engine: Engine, m: Msg, stop: asyncio.Event) -> None:
    try:
        envelope = _decode.decode(m.data)
    except msgspec.ValidationError as exc:
        await _dead_letter(engine, m, f"malformed inbound envelope on {m.subject}: {exc}")
        return
    failures = 0
    delay = 0.2
    while True:
        try:
            with LATENCY.time():
                await engine.handle_inbound(envelope)
            # Not waited for: the effects are stored, the next fetch follows the ack on the same
            # connection, and an ack that is lost only brings the message again (a duplicate).
            await m.ack()
            HANDLED.labels("ok").inc()
            return
        except Exception as exc:
            transient = isinstance(exc, TRANSIENT)
            failures += 0 if transient else 1
            HANDLED.labels("retry").inc()
            log.warning(
                "inbound failed, retrying in place",
                extra={"msg_id": envelope.id, "error": repr(exc), "transient": transient, "retry_in_s": delay},
            )
            if failures >= MAX_OTHER_FAILURES:
                await _dead_letter(engine, m, f"could not handle inbound {envelope.id}: {exc!r}")
                return
        if stop.is_set():
            return  # not acked: redelivered to the next router before anything newer
        await asyncio.sleep(delay)
        delay = min(delay * 2, TRANSIENT_RETRY_MAX if transient else 5.0)


async def _dead_letter(engine: Engine, m: Msg, reason: str) -> None:
    await dead_letter(engine.js, m, reason)
    EVENTS.labels("dead_letter").inc()
    HANDLED.labels("dead_letter").inc()
    log.error("inbound dead-lettered", extra={"reason": reason[:300]})
