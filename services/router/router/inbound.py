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
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from prometheus_client import Counter, Histogram

from openlines import bus, subjects
from openlines.consume import Durable, dead_letter, pause
from openlines.envelopes import Inbound
from openlines.pace import backoff
from openlines.taskdump import await_frames
from router.core.partition_order import Client, PartitionOrder, Read
from router.effects import EVENTS
from router.engine import Engine
from router.order import HELD_BACK, READ_TIMEOUT, Order

log = logging.getLogger("router.inbound")

HANDLED = Counter("openlines_router_inbound_total", "Inbound messages handled", ["result"])
HANDED_BACK = Counter(
    "openlines_router_inbound_handed_back_total", "Messages a partition's previous holder had in hand, delivered again at once"
)
LATENCY = Histogram("openlines_router_inbound_seconds", "Time to handle one inbound message")
MAX_OTHER_FAILURES = 5
# A cluster node killed -9 leaves its streams without a leader for the server's election timeout
# (4-9 s in nats-server); retried at this pace, routing carries on within half a second of the new
# leader, instead of after a back-off grown to seconds meanwhile. A few messages per partition: cheap.
TRANSIENT_RETRY_MAX = 0.5
# The most messages a partition's new holder naks to have its previous holder's messages in hand back at once.
HAND_BACK_AT_MOST = 4096
SLOW = 2.0  # a message in hand this long is logged with where its time went (held back for order, handled)
STUCK = 5.0  # a message still in hand this long is logged once, with the await it is at (known before it ends)

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
    lanes = _Lanes(engine, stop, order, in_hand, ack_wait)
    # Fetched while stopping: left in hand, not nak'd; the next holder hands them all back in stream order.
    lanes.consumer = Durable(js, subjects.STREAM_IN, config, batch=lanes.room, back_on_stop=False)
    await lanes.run()


@dataclass(slots=True)
class _Lane:
    # (stream sequence, delivery number, envelope), in stream order
    queue: deque[tuple[int, int, Inbound]] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    started: bool = False  # the first of the queue is being handled

    def add(self, seq: int, delivery: int, envelope: Inbound) -> None:
        """In stream order: a message of another holder, handed back or redelivered after ``ack_wait``, may come
        after a newer one of its client (held back, not started)."""
        i = len(self.queue)
        while i > (1 if self.started else 0) and self.queue[i - 1][0] > seq:
            i -= 1
        self.queue.insert(i, (seq, delivery, envelope))


class _Lanes:
    """A partition's messages in hand, one lane (a queue and the task working it) per client."""

    def __init__(self, engine: Engine, stop: asyncio.Event, order: Order, limit: int, ack_wait: float) -> None:
        self.engine = engine
        self.stop = stop
        self.order = order
        self.limit = limit
        self.ack_wait = ack_wait
        self.lanes: dict[Client, _Lane] = {}
        self.held: dict[int, Msg] = {}  # stream sequence -> its latest delivery
        self.since: dict[int, float] = {}  # stream sequence -> when it was taken (loop time)
        self.told_stuck: set[int] = set()  # stream sequences logged as still in hand
        self.consumer: Durable

    def room(self) -> int:
        """How many to fetch: none while more than half the limit is in hand (one fetch for several, not one each),
        except while a message waits for another holder's - what it waits for may come only by a fetch."""
        room = self.limit - len(self.held)
        return room if room * 2 >= self.limit or not self.held or self.order.holding() else 0

    async def run(self) -> None:
        beat = asyncio.create_task(self._keep_alive(), name=f"inbound-in-progress-{self.consumer.name}")
        try:
            await self.consumer.run(self._take, self.stop)
            # stopped: what was started finishes; what waits in a lane stays unacknowledged for the next holder
            tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
            if tasks:
                await asyncio.wait(tasks)
        finally:
            for lane in self.lanes.values():
                if lane.task is not None:
                    lane.task.cancel()
            beat.cancel()
            self.order.close()

    async def _take(self, m: Msg) -> None:
        seq, delivery = m.metadata.sequence.stream, m.metadata.sequence.consumer
        self.order.received(seq, delivery)
        if seq in self.held:  # redelivered while still in hand (a heartbeat was late): ack the newest delivery
            self.held[seq] = m
            return
        try:
            envelope = _decode.decode(m.data)
        except msgspec.ValidationError as exc:
            await _dead_letter(self.engine, m, f"malformed inbound envelope on {m.subject}: {exc}")
            self.order.core.finished(seq)
            return
        self.held[seq] = m
        self.since[seq] = asyncio.get_running_loop().time()
        key = (envelope.channel, envelope.account, envelope.chat_id)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = _Lane()
        lane.add(seq, delivery, envelope)
        if lane.task is None:
            lane.task = asyncio.create_task(self._work(key, lane))
        elif lane.queue[0][0] == seq and not lane.started:
            self.order.changed()  # a waiting lane has an older message first now

    async def _work(self, key: Client, lane: _Lane) -> None:
        counted = 0  # the last message of this lane counted as held back
        loop = asyncio.get_running_loop()
        held_back: dict[str, float] = {}  # seconds the lane's first message waited, per reason
        try:
            while lane.queue and not self.stop.is_set():
                seq, delivery, envelope = lane.queue[0]
                reason = self.order.core.waits_for(seq, delivery, key)
                if reason is not None:
                    if counted != seq:
                        counted = seq
                        held_back = {}
                        HELD_BACK.inc()
                    began = loop.time()
                    await self.order.wait(reason)
                    held_back[reason] = held_back.get(reason, 0.0) + loop.time() - began
                    continue
                lane.started = True
                began = loop.time()
                await _handle(self.engine, self.held[seq], envelope, self.stop)
                lane.started = False
                now = loop.time()
                if now - self.since.get(seq, now) >= SLOW:
                    # Where a slow message's time went: in the lane behind its client's earlier ones, held back
                    # for order (another holder's messages), or handled (retried in place).
                    log.info(
                        "inbound slow",
                        extra={
                            "consumer": self.consumer.name,
                            "msg_id": envelope.id,
                            "stream_seq": seq,
                            "delivery": delivery,
                            "in_hand_seconds": round(now - self.since[seq], 2),
                            "held_back_seconds": {k: round(v, 2) for k, v in held_back.items()} if counted == seq else {},
                            "handled_seconds": round(now - began, 2),
                            "deliveries": self.held[seq].metadata.num_delivered,
                            "stored_seconds_ago": round(time.time() - self.held[seq].metadata.timestamp.timestamp(), 2),
                        },
                    )
                lane.queue.popleft()
                self.held.pop(seq, None)
                self.since.pop(seq, None)
                self.told_stuck.discard(seq)
                self.order.core.finished(seq)
                self.consumer.room_freed()
        finally:
            lane.task = None
            if not lane.queue:
                self.lanes.pop(key, None)

    async def _keep_alive(self) -> None:
        """In-progress heartbeats for every message in hand longer than a third of ``ack_wait``, whether worked on
        or waiting in its lane."""
        period = self.ack_wait / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            old = now - period
            for seq, m in list(self.held.items()):
                if self.since.get(seq, 0.0) > old:
                    continue  # taken since the last beat: its ack_wait has two thirds left at least
                if now - self.since.get(seq, now) >= STUCK and seq not in self.told_stuck:
                    self.told_stuck.add(seq)
                    self._tell_stuck(seq, now - self.since[seq])
                with contextlib.suppress(Exception):  # NATS away: the retry in place goes on; redelivery is harmless
                    await m.in_progress()

    def _tell_stuck(self, seq: int, seconds: float) -> None:
        """A message in hand for STUCK seconds and more: where it is (behind its client's earlier ones, or the
        innermost await of its handling) - "inbound slow" comes only when it ends, and a stop may end it first."""
        where = "not started (behind its client's earlier messages, or held back for order)"
        for lane in self.lanes.values():
            if lane.queue and lane.queue[0][0] == seq and lane.started and lane.task is not None:
                # The innermost await of ours (what step), and the innermost of all (waiting on what).
                frames = await_frames(lane.task)
                ours = [f for f in frames if "/router/" in f.f_code.co_filename or "/openlines/" in f.f_code.co_filename]
                where = (
                    " / ".join(
                        f"{f.f_code.co_filename.rsplit('/', 2)[-2]}/{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno}"
                        f" {f.f_code.co_name}"
                        for f in dict.fromkeys(frames[-1:] if not ours else [ours[-1], frames[-1]])
                    )
                    or "handled"
                )
        log.info(
            "inbound still in hand",
            extra={"consumer": self.consumer.name, "stream_seq": seq, "in_hand_seconds": round(seconds, 2), "at": where},
        )


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


async def _handle(engine: Engine, m: Msg, envelope: Inbound | None, stop: asyncio.Event) -> None:
    """Handle one message (``envelope``: decoded already, or None) and ack it; retried in place until done."""
    if envelope is None:
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
            transient = isinstance(exc, bus.UNAVAILABLE) or bus.storing_already(exc)
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
