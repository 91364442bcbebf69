"""Operator replies to a messenger, one lane per chat: the part of a channel's sender
that is the same for every channel (Telegram, WhatsApp).

- **Order per chat, no head-of-line blocking between chats.** Each chat has its
  own lane (a queue and the task working it); a chat waiting out a rate limit or
  a backoff holds only its own lane. Replicas share the durable consumer.
- **Bounded.** At most ``in_flight`` messages are held; the consumer fetches
  only what that leaves room for.
- **Ack after the effect** is the channel's :meth:`LaneSender._handle`; messages
  held longer than ``ack_wait`` are kept alive with in-progress acks.
- **Clean stop.** Fetching stops, sends in flight get ``shutdown_timeout`` to
  finish, and what is still held is handed back (nak) for another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from openlines import bus, subjects
from openlines.consume import Durable, outbound_consumer
from openlines.envelopes import Outbound, decoder
from openlines.pace import Pace, backoff

log = logging.getLogger("openlines.lanes")

FETCH_AT_MOST = 64

_outbound = decoder(Outbound)


class _Record(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Record)


def sent_key(outbound_id: str) -> str:
    """The key of an outbound message's record: a digest of its id (ids contain ``:``, which KV keys do not allow)."""
    return "o" + hashlib.blake2b(outbound_id.encode(), digest_size=16).hexdigest()


class SentLog(Generic[R]):
    """What was sent of each outbound message, one record (``typ``, with the outbound ``id``) per message in the
    channel's own bucket: written before each part is sent and after it was accepted, so a redelivered message
    resumes after the last part the channel accepted."""

    def __init__(self, kv: KeyValue, typ: type[R]) -> None:
        self.kv = kv
        self.typ = typ

    async def get(self, outbound_id: str) -> R:
        """The message's record; a fresh one (nothing sent) when there is none."""
        rec, _ = await bus.kv_get(self.kv, sent_key(outbound_id), self.typ)
        return rec if rec is not None else msgspec.convert({"id": outbound_id}, self.typ)

    async def put(self, rec: R) -> None:
        await self.kv.put(sent_key(rec.id), msgspec.json.encode(rec))


class PartsSent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What was sent of one outbound message, part by part (text chunks, then files): the fields every channel's
    record has. A channel's record adds the ids its API gave the parts (:meth:`accepted`)."""

    id: str  # the outbound id
    parts: int = 0  # parts the channel accepted so far
    attempting: int = 0  # 1-based index of the part whose send has started
    uncertain: int = 0  # parts sent again because a crash left their delivery unknown
    done: bool = False  # every part accepted, or given up (failed)
    failed: str = ""  # the reason when given up

    def accepted(self, ident: Any, last: bool) -> Any:
        """The record after the channel accepted the next part under ``ident`` (the record's own type)."""
        raise NotImplementedError


P = TypeVar("P", bound=PartsSent)
E = TypeVar("E", bound=Exception)


class Stopping(Exception):
    """The service is stopping: leave the message for redelivery."""


@dataclass(slots=True)
class Held:
    msg: Msg
    seq: int
    account: str


@dataclass(slots=True)
class Lane:
    key: str
    queue: deque[Held] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    pace: Pace | None = None
    throttled: int = 0  # the chat's rate-limit refusals in a row (a channel that backs off per chat counts them)


class LaneSender:
    """The lanes and the consumer feeding them; a channel's sender says how one message is delivered (:meth:`_handle`)."""

    name = "lane"  # task names: <name>-lane-<account>.<chat>

    def __init__(
        self,
        js: JetStreamContext,
        channel: str,
        durable: str,
        *,
        in_flight: int,
        ack_wait: float,
        retry_delay: float,
        shutdown_timeout: float,
        held_gauge: Gauge,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.channel = channel
        self.clock = clock
        self.lanes: dict[str, Lane] = {}
        self.held: dict[int, Held] = {}
        self.stopping = asyncio.Event()
        self._in_flight = in_flight
        self._ack_wait = ack_wait
        self._retry_delay = retry_delay
        self._shutdown_timeout = shutdown_timeout
        self._held_gauge = held_gauge
        config = outbound_consumer(channel, durable, ack_wait=ack_wait, max_ack_pending=max(1000, in_flight * 4))
        self.consumer = Durable(js, subjects.STREAM_OUT, config, batch=self._room_left, fetch_timeout=2.0, retry_delay=1.0)
        self._keepalive: asyncio.Task[None] | None = None

    # -- what a channel provides -------------------------------------------

    async def prepare(self) -> None:
        """Open what delivering needs before the first message (retried until it works)."""

    async def _handle(self, lane: Lane, held: Held) -> None:
        """Deliver one message and ack (or term) it; raise :class:`Stopping` to leave it for redelivery."""
        raise NotImplementedError

    # -- what every channel does with a message ------------------------------

    async def _open(self, held: Held, sent: SentLog[P]) -> tuple[Outbound, P] | None:
        """The held message and what was sent of it so far; None when it needs no more: an undecodable message is
        dropped (term), one already delivered or given up is a redelivery (ack)."""
        try:
            out = _outbound.decode(held.msg.data)
        except msgspec.DecodeError as exc:
            log.warning("undecodable outbound message dropped", extra={"seq": held.seq, "error": str(exc)})
            await held.msg.term()
            return None
        rec = await sent.get(out.id)
        if rec.done:
            log.info("outbound already handled; acking the redelivery", extra={"msg_id": out.id, "account": out.account})
            await held.msg.ack_sync()
            return None
        return out, rec

    async def _take_turn(self, *paces: Pace) -> None:
        """Wait for a send slot of each pace in turn (the chat's, then its bot's or number's), each booked when the
        wait for the one before is over; :class:`Stopping` when the service stops first."""
        if self.stopping.is_set():
            raise Stopping
        for pace in paces:
            await self._sleep(pace.reserve(self.clock()))

    async def _retry_later(self, account: str, msg_id: str, attempt: int, delay: float, error: str) -> None:
        """Wait ``delay`` after a send's transient failure before trying it again."""
        log.info(
            "send failed, retrying",
            extra={"account": account, "msg_id": msg_id, "attempt": attempt, "delay": round(delay, 2), "error": error},
        )
        await self._sleep(delay)

    async def _given_up(self, held: Held, rec: P, reason: str, record: Callable[[P], Awaitable[None]], failed: Counter) -> None:
        """End a message that will not be delivered, once its failure was reported: record it done with ``reason``
        (a redelivery is then acked without a send), ack it, count it in ``failed``."""
        await record(msgspec.structs.replace(rec, done=True, failed=reason))
        await held.msg.ack_sync()
        failed.inc()
        log.warning(
            "outbound delivery failed",
            extra={"channel": self.channel, "account": held.account, "msg_id": rec.id, "reason": reason},
        )

    # -- a message of several parts ------------------------------------------

    async def _send_parts(
        self,
        held: Held,
        rec: P,
        count: int,
        send: Callable[[int], Awaitable[Any]],
        record: Callable[[P], Awaitable[None]],
        resends: Counter,
        give_up: type[E],
        fail: Callable[[P, int, E], Awaitable[None]],
        delivered: Counter,
    ) -> P | None:
        """Send the parts ``rec`` does not have yet, in order: each recorded as attempting before ``send(index)`` and
        as accepted (with the id ``send`` returns) after it. A part found attempting but not accepted - a crash
        between the send and its record - is sent again (a reply is never lost) and counted in ``uncertain`` and
        ``resends``, so a double is never silent. ``give_up`` from ``send`` ends the message: ``fail(record, index,
        exc)`` and None. Otherwise the message is acked once every part is recorded, counted in ``delivered``, and
        the record, done, returned."""
        for index in range(rec.parts, count):
            if rec.attempting > index:
                rec = msgspec.structs.replace(rec, uncertain=rec.uncertain + 1)
                resends.labels(held.account).inc()
                log.warning(
                    "resending a part whose delivery is unknown after a crash; the client may see it twice",
                    extra={"account": held.account, "msg_id": rec.id, "part": index + 1},
                )
            rec = msgspec.structs.replace(rec, attempting=index + 1)
            await record(rec)
            try:
                ident = await send(index)
            except give_up as exc:
                await fail(rec, index, exc)
                return None
            rec = rec.accepted(ident, last=index == count - 1)
            await record(rec)
        if not rec.done:  # nothing was left to send (every part recorded before a crash, or none to send)
            rec = msgspec.structs.replace(rec, done=True)
            await record(rec)
        await held.msg.ack_sync()
        delivered.labels(held.account).inc()
        return rec

    # -- the consumer ------------------------------------------------------

    def ready(self) -> str | None:
        return None if self.consumer.running else "outbound consumer not running"

    def _room_left(self) -> int:
        """How many messages to fetch now: what the in-flight limit leaves, a bounded batch at a time."""
        return min(self._in_flight - len(self.held), FETCH_AT_MOST)

    async def run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                await self.prepare()
                break
            except Exception as exc:  # nats raises several unrelated types
                attempt += 1
                log.warning("sender not ready, retrying", extra={"attempt": attempt, "error": repr(exc)})
                await self._pause(backoff(attempt, 0.2, 5.0))
        else:
            return
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"{self.name}-keepalive")
        await self.consumer.run(self._take, self.stopping)

    async def _take(self, msg: Msg) -> None:
        self._dispatch(msg)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    def _dispatch(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq in self.held:  # a redelivery of what we still hold: ack the newest delivery
            self.held[seq].msg = msg
            return
        try:
            _channel, account, chat = subjects.parse_outbound(msg.subject)
        except subjects.BadToken:
            log.warning("outbound on an unexpected subject dropped", extra={"subject": msg.subject})
            asyncio.create_task(msg.term())  # noqa: RUF006 - fire and forget; a lost term is a redelivery
            return
        held = Held(msg=msg, seq=seq, account=account)
        self.held[seq] = held
        self._held_gauge.set(len(self.held))
        key = f"{account}.{chat}"
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(key=key)
        lane.queue.append(held)
        if lane.task is None:
            lane.task = asyncio.create_task(self._work(lane), name=f"{self.name}-lane-{key}")

    def _release(self, held: Held) -> None:
        self.held.pop(held.seq, None)
        self._held_gauge.set(len(self.held))
        self.consumer.room_freed()

    async def _keep_alive(self) -> None:
        period = max(0.5, self._ack_wait / 3)
        while True:
            await asyncio.sleep(period)
            for held in list(self.held.values()):
                with contextlib.suppress(Exception):
                    await held.msg.in_progress()
            now = self.clock()
            for key, lane in list(self.lanes.items()):
                if lane.task is None and not lane.queue and (lane.pace is None or lane.pace.idle(now)):
                    del self.lanes[key]

    # -- one chat ----------------------------------------------------------

    async def _work(self, lane: Lane) -> None:
        try:
            while lane.queue and not self.stopping.is_set():
                held = lane.queue[0]
                try:
                    await self._handle(lane, held)
                except Stopping:
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # NATS trouble while recording or acking: let it come back later.
                    log.warning("outbound left for redelivery", extra={"seq": held.seq, "error": repr(exc)})
                    with contextlib.suppress(Exception):
                        await held.msg.nak(delay=self._retry_delay)
                lane.queue.popleft()
                self._release(held)
        finally:
            lane.task = None

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raise :class:`Stopping` when the service stops meanwhile."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        if self.stopping.is_set():
            raise Stopping

    async def _retrying(self, what: str, msg_id: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Store something we must not forget; keep trying while NATS is away (:class:`Stopping` ends it)."""
        attempt = 0
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                log.warning(f"could not store {what}, retrying", extra={"msg_id": msg_id, "error": repr(exc)})
                await self._sleep(backoff(attempt, 0.2, 5.0))

    # -- stopping ----------------------------------------------------------

    async def stop(self) -> None:
        """Stop fetching; let sends in flight finish; hand back what is left (nak) for another replica."""
        self.stopping.set()
        await self.consumer.close()  # no more fetching
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self._shutdown_timeout)
        for task in tasks:
            task.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        for held in list(self.held.values()):
            with contextlib.suppress(Exception):
                await held.msg.nak()
        self.held.clear()
