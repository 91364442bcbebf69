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

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gateway_telegram import metrics
from gateway_telegram.api import BotPool
from gateway_telegram.deliver import Files, Part, Permanent, RetryAfter, Transient, plan, send_part
from gateway_telegram.normalise import CHANNEL
from gateway_telegram.sent import UNCERTAIN_RESENDS, Sent, SentRecord, open_bucket
from gateway_telegram.settings import Settings
from openlines import marks
from openlines.envelopes import Outbound
from openlines.lanes import Held, Lane, LaneSender
from openlines.pace import Pace, backoff

log = logging.getLogger("gateway_telegram.sender")


class Sender(LaneSender):
    name = "tg"

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
        super().__init__(
            js,
            CHANNEL,
            settings.telegram_consumer,
            in_flight=settings.telegram_in_flight,
            ack_wait=settings.telegram_ack_wait,
            retry_delay=settings.telegram_backoff,
            shutdown_timeout=settings.shutdown_timeout,
            held_gauge=metrics.HELD,
            clock=clock,
        )
        self.nc = nc
        self.pool = pool
        self.files = Files(js, settings.telegram_max_download, settings.telegram_timeout)
        self.sent: Sent | None = None
        self.bot_pace: dict[str, Pace] = {}

    async def prepare(self) -> None:
        s = self.settings
        kv = await open_bucket(self.js, ttl=s.telegram_sent_ttl, replicas=s.replicas)
        self.sent = Sent(kv)

    # -- one chat ---------------------------------------------------------

    async def _handle(self, lane: Lane, held: Held) -> None:
        assert self.sent is not None
        opened = await self._open(held, self.sent)
        if opened is None:
            return
        out, rec = opened
        bot = self.pool.bot(held.account)
        if bot is None:
            await self._fail(held, out, rec, f"no bot is configured for telegram account {held.account!r} in this gateway")
            return
        if lane.pace is None:
            group = out.chat_id.startswith("-")
            rate = self.settings.telegram_group_rate if group else self.settings.telegram_chat_rate
            lane.pace = Pace(rate, self.settings.telegram_chat_burst)
        parts = plan(out)

        async def fail(rec: SentRecord, _index: int, exc: Permanent) -> None:
            await self._fail(held, out, rec, exc.reason)

        done = await self._send_parts(
            held,
            rec,
            len(parts),
            lambda index: self._send(lane, held.account, bot, out, parts[index]),
            self._record,
            UNCERTAIN_RESENDS,
            Permanent,
            fail,
            metrics.DELIVERED,
        )
        if done is None:
            return
        log.info("outbound delivered", extra={"channel": CHANNEL, "account": held.account, "msg_id": out.id, "parts": len(parts)})

    def _bot_pace(self, account: str) -> Pace:
        pace = self.bot_pace.get(account)
        if pace is None:
            rate = self.settings.telegram_bot_rate
            pace = self.bot_pace[account] = Pace(rate, max(1, int(rate)))
        return pace

    async def _send(self, lane: Lane, account: str, bot: Any, out: Outbound, part: Part) -> int:
        assert lane.pace is not None
        attempt = 0
        while True:
            await self._take_turn(lane.pace, self._bot_pace(account))
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
                await self._retry_later(account, out.id, attempt, delay, exc.reason)
                continue
            metrics.SENT.labels(account, part.method).inc()
            return message_id

    async def _record(self, rec: SentRecord) -> None:
        assert self.sent is not None
        sent = self.sent
        await self._retrying("a delivery record", rec.id, lambda: sent.put(rec))

    async def _fail(self, held: Held, out: Outbound, rec: SentRecord, reason: str) -> None:
        await self._retrying(
            "delivery_failed",
            out.id,
            lambda: marks.outbound_failed(self.js, out, channel=CHANNEL, account=out.account or held.account, reason=reason),
        )
        await self._given_up(held, rec, reason, self._record, metrics.FAILED.labels(held.account))

    # -- stopping ---------------------------------------------------------

    async def stop(self) -> None:
        await super().stop()
        await self.files.close()
