"""The inbound consumer of one partition: its messages handled in order per client,
acked only after their effects are durable.

Order matters more than speed here: a client's second message must never be
handled before their first. A partition carries many clients, though, and
their messages need no order between them (decision 029): the consumer holds
up to ``in_hand`` unacknowledged messages of its partition, each client's in
its own lane, worked one message at a time in stream order; lanes of
different clients run side by side. A message that fails is retried *in
place* (not nak'ed to the back), holding up only its client's lane - forever
while the failure is NATS being unreachable, a few times for anything else
before it is dead-lettered with the reason.

After a crash the unacknowledged messages are redelivered after ``ack_wait``
(in stream order), or at once when the partition's next holder hands them
back (:func:`_hand_back`). Whoever else is handed messages of the partition
- the previous holder's, still out there, or its pull request still
outstanding while two replicas hold the partition for a moment - a client's
message starts only when no earlier message of the client may be in another
holder's hand (:mod:`router.core.partition_order`, decision 033): on the
common path, one holder, that is known without a round trip. ``ack_wait`` is
short (about the partition lease, so a replica killed -9 holds up its
partitions no longer than that); messages in hand longer - a loaded machine,
NATS away and the message retried in place, a client's earlier message still
worked on - stay ours by in-progress heartbeats every third of it.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import Counter

from openlines import subjects
from openlines.consume import Durable, pause
from openlines.pace import backoff
from router.core.partition_order import PartitionOrder, Read
from router.engine import Engine
from router.lanes import Lanes
from router.order import READ_TIMEOUT, Order

log = logging.getLogger("router.inbound")

HANDED_BACK = Counter(
    "openlines_router_inbound_handed_back_total", "Messages a partition's previous holder had in hand, delivered again at once"
)
# The most messages a partition's new holder naks to have its previous holder's messages in hand back at once.
HAND_BACK_AT_MOST = 4096


async def consume(
    js: JetStreamContext,
    engine: Engine,
    *,
    durable: str,
    filter_subject: str,
    ack_wait: float,
    stop: asyncio.Event,
    nc: NATS | None = None,
    in_hand: int = 1,
) -> None:
    """Consume one partition, up to ``in_hand`` messages at once (one client's in order). With ``nc``, the partition
    was just taken: the messages its previous holder had in hand are delivered again at once (:func:`_hand_back`)."""
    order = Order(js, durable, filter_subject, stop)
    attempt = 0
    while not stop.is_set():  # before anything is fetched: what others may have in hand must be known
        try:
            read = await order.read()
            if nc is not None and read is not None:
                await _hand_back(nc, durable, read, order.core)
            break
        except Exception as exc:  # NATS away, a stream leader being elected
            attempt += 1
            log.info("partition consumer not read yet", extra={"consumer": durable, "error": repr(exc)})
            await pause(stop, backoff(attempt, 0.1, READ_TIMEOUT))
    config = js_api.ConsumerConfig(
        name=durable,
        durable_name=durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=in_hand,  # nothing more is delivered while this many are in hand (redeliveries still are)
        deliver_policy=js_api.DeliverPolicy.ALL,
        filter_subject=filter_subject,
    )
    lanes = Lanes(engine, stop, order, in_hand, ack_wait)
    # Fetched while stopping: left in hand, not nak'd; the next holder hands them all back in stream order.
    lanes.consumer = Durable(js, subjects.STREAM_IN, config, batch=lanes.room, back_on_stop=False)
    await lanes.run()


async def _hand_back(nc: NATS, durable: str, read: Read, order: PartitionOrder) -> None:
    """Have the messages a partition consumer's previous holder left unacknowledged delivered again now.

    A holder killed -9 leaves them pending until ``ack_wait`` runs out after its last in-progress heartbeat; the
    replica that took the partition over naks them instead, on the acknowledgement subjects JetStream gave it
    (``$JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<consumer seq>.<time>.<pending>``). They are the
    partition's messages between the consumer's acknowledgement floor and its last delivery that the read found
    (``order.unknown``), and any the read did not get to; nak'd in order, oldest first (at most
    ``HAND_BACK_AT_MOST``; any further come after ``ack_wait``). The server ignores a nak for one that is not
    pending (acked meanwhile). One the previous holder still works on (it lost its lease, it is not dead) is
    handled twice - harmless (decision 023) - and its ack removes the redelivery."""
    if read.last <= read.floor:
        return
    unread = range(max(order.known_to, order.floor) + 1, read.last + 1)
    back = [*sorted(order.unknown), *unread][:HAND_BACK_AT_MOST]
    for sseq in back:
        await nc.publish(f"$JS.ACK.{subjects.STREAM_IN}.{durable}.1.{sseq}.{read.delivery}.0.0", b"-NAK")
    HANDED_BACK.inc(len(order.unknown))
    log.info(
        "messages in hand of the previous holder handed back",
        extra={"consumer": durable, "stream_seq": read.last, "pending": len(order.unknown)},
    )
