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
back (:func:`hand_back`). Until every message the previous holder had in hand
is acknowledged, the next holder starts nothing newer than the last one it
delivered (:class:`_Gate`), so a client's later message never overtakes an
earlier one that is still out there. ``ack_wait`` is short (about the
partition lease, so a replica killed -9 holds up its partitions no longer
than that); messages in hand longer - a loaded machine, NATS away and the
message retried in place, a client's earlier message still worked on - stay
ours by in-progress heartbeats every third of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from prometheus_client import Counter, Histogram

from openlines import bus, subjects
from openlines.consume import Durable, dead_letter, pause
from openlines.envelopes import Inbound
from openlines.pace import backoff
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
# leader, instead of after a back-off grown to seconds meanwhile. A few messages per partition: cheap.
TRANSIENT_RETRY_MAX = 0.5
# The most stream sequences a partition's new holder naks to have its previous holder's messages in hand back at
# once (they lie between the consumer's acknowledgement floor and its last delivery, other partitions' between).
HAND_BACK_AT_MOST = 4096
GATE_POLL = 0.05  # seconds between looks at the consumer while a take-over's gate is closed

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
    was just taken: the messages its previous holder had in hand are delivered again at once (:func:`hand_back`)."""
    gate = _Gate(js, durable, stop)
    if nc is not None:
        attempt = 0
        while not stop.is_set():  # before anything is fetched: what the previous holder had in hand must be known
            try:
                gate.upto = await hand_back(nc, js, durable)
                break
            except NotFoundError:
                break  # no consumer yet: nothing was in hand
            except Exception as exc:  # NATS away, a stream leader being elected
                attempt += 1
                log.info("messages in hand not handed back yet", extra={"consumer": durable, "error": repr(exc)})
                await pause(stop, backoff(attempt, 0.1, 2.0))
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
    lanes = _Lanes(engine, stop, gate, in_hand, ack_wait)
    # Fetched while stopping: left in hand, not nak'd - a nak could put a client's later message before an
    # earlier one still worked on here; the next holder hands them all back in stream order.
    lanes.consumer = Durable(js, subjects.STREAM_IN, config, batch=lanes.room, back_on_stop=False)
    await lanes.run()


class _Gate:
    """Holds back messages newer than the last one the partition's previous holder was delivered (``upto``) until
    all it had in hand is acknowledged: with more than one message in hand, the server delivers newer messages
    beside the ones it redelivers, and a client's newer message must not overtake an older one.
    ``upto`` 0: nothing was in hand."""

    def __init__(self, js: JetStreamContext, durable: str, stop: asyncio.Event) -> None:
        self.js = js
        self.durable = durable
        self.stop = stop
        self.upto = 0
        self._open: asyncio.Event | None = None
        self._watch: asyncio.Task[None] | None = None

    def holds(self, seq: int) -> bool:
        return self.upto != 0 and seq > self.upto

    async def wait(self) -> None:
        """Wait a moment for the gate to open: the caller looks again at what its lane starts with (an older
        message of its client may have come meanwhile and must go first)."""
        if self._open is None:
            self._open = asyncio.Event()
            self._watch = asyncio.create_task(self._watch_floor(), name=f"gate-{self.durable}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._open.wait(), timeout=GATE_POLL)

    async def _watch_floor(self) -> None:
        assert self._open is not None
        attempt = 0
        while not self.stop.is_set():
            try:
                info = await self.js.consumer_info(subjects.STREAM_IN, self.durable)
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                if not self.upto or (floor or 0) >= self.upto:
                    break
                attempt = 0
                await pause(self.stop, GATE_POLL)
            except Exception as exc:
                attempt += 1
                log.info("partition gate: consumer not read", extra={"consumer": self.durable, "error": repr(exc)})
                await pause(self.stop, backoff(attempt, 0.1, 2.0))
        self.upto = 0
        self._open.set()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


@dataclass(slots=True)
class _Lane:
    queue: deque[tuple[int, Inbound]] = field(default_factory=deque)  # (stream sequence, envelope), in stream order
    task: asyncio.Task[None] | None = None
    started: bool = False  # the first of the queue is being handled

    def add(self, seq: int, envelope: Inbound) -> None:
        """In stream order: a message of the partition's previous holder, handed back or redelivered after
        ``ack_wait``, may come after a newer one of its client (held back by the gate, not started)."""
        i = len(self.queue)
        while i > (1 if self.started else 0) and self.queue[i - 1][0] > seq:
            i -= 1
        self.queue.insert(i, (seq, envelope))


class _Lanes:
    """A partition's messages in hand, one lane (a queue and the task working it) per client."""

    def __init__(self, engine: Engine, stop: asyncio.Event, gate: _Gate, limit: int, ack_wait: float) -> None:
        self.engine = engine
        self.stop = stop
        self.gate = gate
        self.limit = limit
        self.ack_wait = ack_wait
        self.lanes: dict[tuple[str, str, str], _Lane] = {}
        self.held: dict[int, Msg] = {}  # stream sequence -> its latest delivery
        self.since: dict[int, float] = {}  # stream sequence -> when it was taken (loop time)
        self.consumer: Durable

    def room(self) -> int:
        """How many to fetch: none while more than half the limit is in hand (one fetch for several, not one each),
        except while a take-over's gate is closed - what it waits for comes only by a fetch."""
        room = self.limit - len(self.held)
        return room if room * 2 >= self.limit or not self.held or self.gate.upto else 0

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
            self.gate.close()

    async def _take(self, m: Msg) -> None:
        seq = m.metadata.sequence.stream
        if seq in self.held:  # redelivered while still in hand (a heartbeat was late): ack the newest delivery
            self.held[seq] = m
            return
        try:
            envelope = _decode.decode(m.data)
        except msgspec.ValidationError as exc:
            await _dead_letter(self.engine, m, f"malformed inbound envelope on {m.subject}: {exc}")
            return
        self.held[seq] = m
        self.since[seq] = asyncio.get_running_loop().time()
        key = (envelope.channel, envelope.account, envelope.chat_id)
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = _Lane()
        lane.add(seq, envelope)
        if lane.task is None:
            lane.task = asyncio.create_task(self._work(key, lane))

    async def _work(self, key: tuple[str, str, str], lane: _Lane) -> None:
        try:
            while lane.queue and not self.stop.is_set():
                seq, envelope = lane.queue[0]
                if self.gate.holds(seq):
                    await self.gate.wait()
                    continue
                lane.started = True
                await _handle(self.engine, self.held[seq], envelope, self.stop)
                lane.started = False
                lane.queue.popleft()
                self.held.pop(seq, None)
                self.since.pop(seq, None)
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
            old = loop.time() - period
            for seq, m in list(self.held.items()):
                if self.since.get(seq, 0.0) > old:
                    continue  # taken since the last beat: its ack_wait has two thirds left at least
                with contextlib.suppress(Exception):  # NATS away: the retry in place goes on; redelivery is harmless
                    await m.in_progress()


async def hand_back(nc: NATS, js: JetStreamContext, durable: str) -> int:
    """Have the messages a partition consumer's previous holder left unacknowledged delivered again now; returns
    the stream sequence of the last message it was delivered (0: nothing was in hand).

    A holder killed -9 leaves them pending until ``ack_wait`` runs out after its last in-progress heartbeat; the
    replica that took the partition over naks them instead, on the acknowledgement subjects JetStream gave it
    (``$JS.ACK.<stream>.<consumer>.<deliveries>.<stream seq>.<consumer seq>.<time>.<pending>``). The pending ones
    lie between the consumer's acknowledgement floor and its last delivery; every stream sequence between is
    nak'd in order, oldest first (at most ``HAND_BACK_AT_MOST`` of them; any further come after ``ack_wait``), and the server
    ignores a nak for one that is not pending on this consumer (acked, or another partition's). One the previous
    holder still works on (it lost its lease, it is not dead) is handled twice - harmless (decision 023) - and
    its ack removes the redelivery."""
    info = await js.consumer_info(subjects.STREAM_IN, durable)
    if not info.num_ack_pending or info.delivered is None or info.delivered.stream_seq is None:
        return 0
    last, dseq = info.delivered.stream_seq, info.delivered.consumer_seq
    floor = (info.ack_floor.stream_seq or 0) if info.ack_floor else 0
    for sseq in range(floor + 1, min(last, floor + HAND_BACK_AT_MOST) + 1):
        await nc.publish(f"$JS.ACK.{subjects.STREAM_IN}.{durable}.1.{sseq}.{dseq}.0.0", b"-NAK")
    HANDED_BACK.inc(info.num_ack_pending)
    log.info(
        "messages in hand of the previous holder handed back",
        extra={"consumer": durable, "stream_seq": last, "pending": info.num_ack_pending},
    )
    return int(last)


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
            transient = isinstance(exc, TRANSIENT) or bus.storing_already(exc)
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
