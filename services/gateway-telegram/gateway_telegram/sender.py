"""Operator replies -> Telegram: a durable consumer on ``ol.out.telegram.>``
feeding one lane (queue + task) per chat.

- **Order per chat, no head-of-line blocking between chats.** Each chat has
  its own lane; a chat waiting out a 429 ``retry_after`` or a backoff holds
  only its own lane. Replicas share the durable consumer (work-queue style).
- **Pacing.** Per chat ~1 msg/s (groups 20/min) with a small burst, per bot
  ~30 msg/s over all chats (:class:`openlines.pace.Pace`).
- **Ack after the effect.** A message is acked only after every part was
  delivered (and recorded in ``ol-tg-sent``) or after it permanently failed
  and the ``delivery_failed`` event was stored. Messages held longer than
  ``ack_wait`` are kept alive with ``in_progress()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from gateway_telegram import metrics
from gateway_telegram.api import BotPool
from gateway_telegram.deliver import Files, Part, Permanent, RetryAfter, Transient, plan, send_part
from gateway_telegram.normalise import CHANNEL
from gateway_telegram.sent import UNCERTAIN_RESENDS, Sent, SentRecord, open_bucket
from gateway_telegram.settings import Settings
from openlines import marks, subjects
from openlines.consume import Durable
from openlines.envelopes import Outbound, decoder
from openlines.pace import Pace, backoff

log = logging.getLogger("gateway_telegram.sender")

_outbound = decoder(Outbound)


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


class Sender:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        pool: BotPool,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.pool = pool
        self.clock = clock
        self.files = Files(js, settings.telegram_max_download, settings.telegram_timeout)
        self.sent: Sent | None = None
        self.lanes: dict[str, Lane] = {}
        self.held: dict[int, Held] = {}
        self.bot_pace: dict[str, Pace] = {}
        self.stopping = asyncio.Event()
        self.consumer = Durable(
            js, subjects.STREAM_OUT, self.consumer_config(), batch=self._room_left, fetch_timeout=2.0, retry_delay=1.0
        )
        self._keepalive: asyncio.Task[None] | None = None

    # -- consumer --------------------------------------------------------

    def consumer_config(self) -> js_api.ConsumerConfig:
        return js_api.ConsumerConfig(
            name=self.settings.telegram_consumer,
            durable_name=self.settings.telegram_consumer,
            filter_subject=subjects.outbound_channel(CHANNEL),
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=self.settings.telegram_ack_wait,
            max_deliver=-1,
            max_ack_pending=max(1000, self.settings.telegram_in_flight * 4),
        )

    async def _open_sent(self) -> None:
        s = self.settings
        kv = await open_bucket(self.js, ttl=s.telegram_sent_ttl, replicas=s.replicas)
        self.sent = Sent(kv)

    def ready(self) -> str | None:
        return None if self.consumer.running else "outbound consumer not running"

    def _room_left(self) -> int:
        """How many messages to fetch now: what the in-flight limit leaves, at most 64 at a time."""
        return min(self.settings.telegram_in_flight - len(self.held), 64)

    async def run(self) -> None:
        attempt = 0
        while not self.stopping.is_set():
            try:
                await self._open_sent()
                break
            except Exception as exc:  # nats raises several unrelated types
                attempt += 1
                log.warning("sent-messages bucket not opened, retrying", extra={"attempt": attempt, "error": repr(exc)})
                await self._pause(min(5.0, 0.2 * attempt))
        else:
            return
        self._keepalive = asyncio.create_task(self._keep_alive(), name="tg-keepalive")
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
        metrics.HELD.set(len(self.held))
        key = f"{account}.{chat}"
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = Lane(key=key)
        lane.queue.append(held)
        if lane.task is None:
            lane.task = asyncio.create_task(self._work(lane), name=f"tg-lane-{key}")

    def _release(self, held: Held) -> None:
        self.held.pop(held.seq, None)
        metrics.HELD.set(len(self.held))
        self.consumer.room_freed()

    async def _keep_alive(self) -> None:
        period = max(0.5, self.settings.telegram_ack_wait / 3)
        while True:
            await asyncio.sleep(period)
            for held in list(self.held.values()):
                with contextlib.suppress(Exception):
                    await held.msg.in_progress()
            now = self.clock()
            for key, lane in list(self.lanes.items()):
                if lane.task is None and not lane.queue and (lane.pace is None or lane.pace.idle(now)):
                    del self.lanes[key]

    # -- one chat ---------------------------------------------------------

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
                        await held.msg.nak(delay=self.settings.telegram_backoff)
                lane.queue.popleft()
                self._release(held)
        finally:
            lane.task = None

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        if self.stopping.is_set():
            raise Stopping

    async def _handle(self, lane: Lane, held: Held) -> None:
        try:
            out = _outbound.decode(held.msg.data)
        except msgspec.DecodeError as exc:
            log.warning("undecodable outbound message dropped", extra={"seq": held.seq, "error": str(exc)})
            await held.msg.term()
            return
        assert self.sent is not None
        rec = await self.sent.get(out.id)
        if rec.done:
            log.info("outbound already handled; acking the redelivery", extra={"msg_id": out.id, "account": out.account})
            await held.msg.ack_sync()
            return
        bot = self.pool.bot(held.account)
        if bot is None:
            await self._fail(held, out, rec, f"no bot is configured for telegram account {held.account!r} in this gateway")
            return
        if lane.pace is None:
            group = out.chat_id.startswith("-")
            rate = self.settings.telegram_group_rate if group else self.settings.telegram_chat_rate
            lane.pace = Pace(rate, self.settings.telegram_chat_burst)
        parts = plan(out)
        for index, part in enumerate(parts):
            if index < rec.parts:
                continue  # delivered before a crash or a lost ack
            if rec.attempting > index:
                # Sent before a crash, never recorded: Telegram may have it. Resend (never lose a reply) and count it.
                rec = msgspec.structs.replace(rec, uncertain=rec.uncertain + 1)
                UNCERTAIN_RESENDS.labels(held.account).inc()
                log.warning(
                    "resending a part whose delivery is unknown after a crash; the client may see it twice",
                    extra={"account": held.account, "msg_id": out.id, "part": index + 1},
                )
            rec = msgspec.structs.replace(rec, attempting=index + 1)
            await self._record(rec)
            try:
                message_id = await self._send(lane, held.account, bot, out, part)
            except Permanent as exc:
                await self._fail(held, out, rec, exc.reason)
                return
            last = index == len(parts) - 1
            rec = msgspec.structs.replace(rec, parts=index + 1, message_ids=[*rec.message_ids, message_id], done=last)
            await self._record(rec)
        if not rec.done:  # nothing was left to send (all parts recorded before a crash)
            rec = msgspec.structs.replace(rec, done=True)
            await self._record(rec)
        await held.msg.ack_sync()
        metrics.DELIVERED.labels(held.account).inc()
        log.info("outbound delivered", extra={"channel": CHANNEL, "account": held.account, "msg_id": out.id, "parts": len(parts)})

    async def _send(self, lane: Lane, account: str, bot: Any, out: Outbound, part: Part) -> int:
        assert lane.pace is not None
        attempt = 0
        while True:
            if self.stopping.is_set():
                raise Stopping
            await self._sleep(lane.pace.reserve(self.clock()))
            pace = self.bot_pace.get(account)
            if pace is None:
                pace = self.bot_pace[account] = Pace(
                    self.settings.telegram_bot_rate, max(1, int(self.settings.telegram_bot_rate))
                )
            await self._sleep(pace.reserve(self.clock()))
            try:
                message_id = await send_part(bot, out.chat_id, part, self.files)
            except RetryAfter as exc:
                metrics.RETRIES.labels("retry_after").inc()
                log.info("flood control: chat waits", extra={"account": account, "msg_id": out.id, "retry_after": exc.seconds})
                lane.pace.hold(self.clock() + exc.seconds)
                continue
            except Transient as exc:
                attempt += 1
                metrics.RETRIES.labels("transient").inc()
                if attempt >= self.settings.telegram_max_attempts:
                    raise Permanent(f"gave up after {attempt} attempts: {exc.reason}") from None
                delay = backoff(attempt, self.settings.telegram_backoff, self.settings.telegram_backoff_max, random.random())
                log.info(
                    "send failed, retrying",
                    extra={
                        "account": account,
                        "msg_id": out.id,
                        "attempt": attempt,
                        "delay": round(delay, 2),
                        "error": exc.reason,
                    },
                )
                await self._sleep(delay)
                continue
            metrics.SENT.labels(account, part.method).inc()
            return message_id

    async def _record(self, rec: SentRecord) -> None:
        """Store progress before acking; keep trying while NATS is away (we must not forget a send)."""
        assert self.sent is not None
        attempt = 0
        while True:
            try:
                await self.sent.put(rec)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                log.warning("could not record a delivery, retrying", extra={"msg_id": rec.id, "error": repr(exc)})
                await self._sleep(min(5.0, 0.2 * attempt))

    async def _fail(self, held: Held, out: Outbound, rec: SentRecord, reason: str) -> None:
        attempt = 0
        while True:
            try:
                await marks.report_failed(
                    self.js,
                    channel=CHANNEL,
                    session_id=out.session_id,
                    message_id=out.id,
                    account=out.account or held.account,
                    chat_id=out.chat_id,
                    reason=reason,
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                log.warning("could not publish delivery_failed, retrying", extra={"msg_id": out.id, "error": repr(exc)})
                await self._sleep(min(5.0, 0.2 * attempt))
        await self._record(msgspec.structs.replace(rec, done=True, failed=reason))
        await held.msg.ack_sync()
        metrics.FAILED.labels(held.account).inc()
        log.warning(
            "outbound delivery failed", extra={"channel": CHANNEL, "account": held.account, "msg_id": out.id, "reason": reason}
        )

    # -- stopping ---------------------------------------------------------

    async def stop(self) -> None:
        """Stop fetching; let sends in flight finish; hand back what is left (nak) for another replica."""
        self.stopping.set()
        await self.consumer.close()  # no more fetching
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout)
        for task in tasks:
            task.cancel()
        if self._keepalive is not None:
            self._keepalive.cancel()
        for held in list(self.held.values()):
            with contextlib.suppress(Exception):
                await held.msg.nak()
        self.held.clear()
        await self.files.close()
