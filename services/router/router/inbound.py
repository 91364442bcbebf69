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
from nats.aio.client import Client as NATS
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
HANDED_BACK = Counter(
    "openlines_router_inbound_handed_back_total", "Messages a partition's previous holder had in hand, delivered again at once"
)
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
    js: JetStreamContext,
    engine: Engine,
    *,
    durable: str,
    filter_subject: str,
    ack_wait: float,
    stop: asyncio.Event,
    nc: NATS | None = None,
) -> None:
    """Consume one partition. With ``nc``, the partition was just taken: the message its previous holder had in
    hand (if any) is delivered again at once instead of after ``ack_wait`` (:func:`hand_back`)."""
    if nc is not None:
        try:
            await hand_back(nc, js, durable)
        except Exception as exc:  # no consumer yet, NATS away: it comes again after ack_wait instead
            log.info("message in hand not handed back", extra={"consumer": durable, "error": repr(exc)})
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


async def hand_back(nc: NATS, js: JetStreamContext, durable: str) -> bool:
    """Have the message a partition consumer's previous holder left unacknowledged delivered again now.

    A holder killed -9 leaves it pending until ``ack_wait`` runs out after its last in-progress heartbeat; the
    replica that took the partition over naks it instead, on the acknowledgement subject JetStream gave it
    (``$JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<consumer seq>.<time>.<pending>``). With
    ``max_ack_pending = 1`` the one pending message is the last delivered. A nak for a message acked meanwhile
    is ignored by the server; one the previous holder still works on (it lost its lease, it is not dead) is
    handled twice - harmless (decision 023) - and its ack removes the redelivery."""
    info = await js.consumer_info(subjects.STREAM_IN, durable)
    if not info.num_ack_pending or info.delivered is None:
        return False
    sseq, dseq = info.delivered.stream_seq, info.delivered.consumer_seq
    await nc.publish(f"$JS.ACK.{subjects.STREAM_IN}.{durable}.1.{sseq}.{dseq}.0.0", b"-NAK")
    HANDED_BACK.inc()
    log.info("message in hand of the previous holder handed back", extra={"consumer": durable, "stream_seq": sseq})
    return True


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
