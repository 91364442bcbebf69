"""A partition's messages in hand: one lane per client, worked one message at a time in stream order.

Lanes of different clients run side by side (decision 029); a client's message starts only when no earlier
message of the client may be in another holder's hand (``router.order``, decision 033). A message that fails
is retried *in place* (not nak'ed to the back), holding up only its client's lane - forever while the failure
is NATS being unreachable, a few times for anything else before it is dead-lettered with the reason. Messages
in hand longer than a third of ``ack_wait`` stay ours by in-progress heartbeats. How the partition's consumer
is set up and handed the previous holder's messages: ``router.inbound``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import msgspec
from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram

from openlines import bus
from openlines.consume import Durable, dead_letter
from openlines.envelopes import Inbound
from openlines.taskdump import await_frames
from router.core.partition_order import Client
from router.effects import EVENTS
from router.engine import Engine
from router.order import HELD_BACK, Order

log = logging.getLogger("router.inbound")

HANDLED = Counter("openlines_router_inbound_total", "Inbound messages handled", ["result"])
LATENCY = Histogram("openlines_router_inbound_seconds", "Time to handle one inbound message")
MAX_OTHER_FAILURES = 5
# A cluster node killed -9 leaves its streams without a leader for the server's election timeout
# (4-9 s in nats-server); retried at this pace, routing carries on within half a second of the new
# leader, instead of after a back-off grown to seconds meanwhile. A few messages per partition: cheap.
TRANSIENT_RETRY_MAX = 0.5
SLOW = 2.0  # a message in hand this long is logged with where its time went (held back for order, handled)
STUCK = 5.0  # a message still in hand this long is logged once, with the await it is at (known before it ends)

_decode = msgspec.json.Decoder(Inbound)


@dataclass(slots=True)
class Lane:
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


class Lanes:
    """A partition's messages in hand, one lane (a queue and the task working it) per client."""

    def __init__(self, engine: Engine, stop: asyncio.Event, order: Order, limit: int, ack_wait: float) -> None:
        self.engine = engine
        self.stop = stop
        self.order = order
        self.limit = limit
        self.ack_wait = ack_wait
        self.lanes: dict[Client, Lane] = {}
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
            lane = self.lanes[key] = Lane()
        lane.add(seq, delivery, envelope)
        if lane.task is None:
            lane.task = asyncio.create_task(self._work(key, lane))
        elif lane.queue[0][0] == seq and not lane.started:
            self.order.changed()  # a waiting lane has an older message first now

    async def _work(self, key: Client, lane: Lane) -> None:
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
