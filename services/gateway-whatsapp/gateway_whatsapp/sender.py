"""Operator replies -> WhatsApp: a durable consumer on ``ol.out.whatsapp.>`` feeding one lane (queue + task) per chat.

- **Order per chat, no head-of-line blocking between chats.** A chat waiting
  out a pair-rate limit (131056) or a backoff holds only its own lane.
  Replicas share the durable consumer (work-queue style).
- **Pacing.** Per phone number at most ``OPENLINES_WHATSAPP_NUMBER_RATE``
  (80/s, the Cloud API's default throughput) over all its chats; per client
  ``OPENLINES_WHATSAPP_USER_RATE`` (one per 6 s, WhatsApp's pair rate) after a
  burst. Error 130429 / 80007 / 4 (throughput) slows the whole number, 131056
  (pair rate) the one chat; both back off and send again, counting no attempt.
- **Recorded before attempted, acked after the effect.** Each part is written
  to ``ol-wa-sent`` as *attempting* before its call and as *done* after
  WhatsApp accepted it; the message is acked when every part is recorded, or
  after it was given up and the ``delivery_failed`` event and the failed mark
  were stored. A part found attempting but not done after a crash is sent again
  and counted as an uncertain resend.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gateway_whatsapp import metrics
from gateway_whatsapp.accounts import Accounts, Number
from gateway_whatsapp.core.errors import Verdict, classify
from gateway_whatsapp.deliver import Part, plan, send_part
from gateway_whatsapp.graph import Graph, GraphError, GraphUnavailable
from gateway_whatsapp.marks import publish_failed, publish_mark
from gateway_whatsapp.media import DeskFiles, FileProblem
from gateway_whatsapp.normalise import CHANNEL
from gateway_whatsapp.sent import Sent, SentRecord, open_bucket
from gateway_whatsapp.settings import Settings
from openlines.envelopes import Outbound, utcnow
from openlines.lanes import Held, Lane, LaneSender
from openlines.pace import Pace, backoff

log = logging.getLogger("gateway_whatsapp.sender")


class GiveUp(Exception):
    """The part will not be delivered: report it and ack."""

    def __init__(self, reason: str, code: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(slots=True)
class NumberPace:
    pace: Pace
    throttled: int = 0  # throughput refusals in a row


class Sender(LaneSender):
    name = "wa"

    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        accounts: Accounts,
        graph: Graph,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        super().__init__(
            js,
            CHANNEL,
            settings.whatsapp_consumer,
            in_flight=settings.whatsapp_in_flight,
            ack_wait=settings.whatsapp_ack_wait,
            retry_delay=settings.whatsapp_backoff,
            shutdown_timeout=settings.shutdown_timeout,
            held_gauge=metrics.HELD,
            clock=clock,
        )
        self.nc = nc
        self.accounts = accounts
        self.graph = graph
        self.files = DeskFiles(js, max_bytes=settings.whatsapp_max_upload, timeout=settings.whatsapp_media_timeout)
        self.sent: Sent | None = None
        self.numbers: dict[str, NumberPace] = {}

    async def prepare(self) -> None:
        s = self.settings
        self.sent = Sent(await open_bucket(self.js, ttl=s.whatsapp_sent_ttl, replicas=s.replicas))

    # -- one chat ---------------------------------------------------------

    async def _handle(self, lane: Lane, held: Held) -> None:
        assert self.sent is not None
        opened = await self._open(held, self.sent)
        if opened is None:
            return
        out, rec = opened
        number = self.accounts.number(held.account)
        if number is None:
            reason = f"not sent: no WhatsApp number is configured for account {held.account!r} in this gateway"
            await self._fail(held, out, rec, reason, 0, 0)
            return
        if lane.pace is None:
            lane.pace = Pace(self.settings.whatsapp_user_rate, self.settings.whatsapp_user_burst)
        parts = plan(out)

        async def fail(rec: SentRecord, index: int, exc: GiveUp) -> None:
            await self._fail(held, out, rec, exc.reason, index, exc.code)

        done = await self._send_parts(
            held,
            rec,
            len(parts),
            lambda index: self._send(lane, number, out, parts[index], index),
            self._record,
            metrics.UNCERTAIN_RESENDS,
            GiveUp,
            fail,
            metrics.DELIVERED,
        )
        if done is None:
            return
        log.info(
            "outbound handed to WhatsApp",
            extra={"channel": CHANNEL, "account": held.account, "msg_id": out.id, "parts": len(parts)},
        )

    def _number_pace(self, account: str) -> NumberPace:
        np = self.numbers.get(account)
        if np is None:
            rate = self.settings.whatsapp_number_rate
            np = self.numbers[account] = NumberPace(Pace(rate, max(1, int(rate))))
        return np

    def _throttle_delay(self, times: int) -> float:
        s = self.settings
        return backoff(times, s.whatsapp_backoff, s.whatsapp_backoff_max, random.random())

    async def _send(self, lane: Lane, number: Number, out: Outbound, part: Part, index: int) -> str:
        assert lane.pace is not None
        attempt = 0
        while True:
            np = self._number_pace(number.account)
            await self._take_turn(lane.pace, np.pace)
            try:
                wamid, wa_type = await send_part(self.graph, number, self.files, out, part, index)
            except FileProblem as exc:
                if exc.permanent:
                    raise GiveUp(f"not sent: {exc.reason}") from None
                verdict = Verdict("transient", exc.reason)
            except GraphError as exc:
                verdict = classify(exc.failure)
            except GraphUnavailable as exc:
                verdict = Verdict("transient", str(exc))
            else:
                lane.throttled = np.throttled = 0
                metrics.SENT.labels(number.account, wa_type).inc()
                return wamid
            if verdict.kind == "throttle_number":
                np.throttled += 1
                delay = self._throttle_delay(np.throttled)
                metrics.RETRIES.labels("throughput").inc()
                log.info("number throughput reached: its chats wait", extra={"account": number.account, "delay": round(delay, 2)})
                np.pace.hold(self.clock() + delay)
                continue
            if verdict.kind == "throttle_user":
                lane.throttled += 1
                delay = max(6.0 * lane.throttled, self._throttle_delay(lane.throttled))
                delay = min(delay, self.settings.whatsapp_backoff_max)
                metrics.RETRIES.labels("pair_rate").inc()
                log.info(
                    "pair rate reached: this chat waits", extra={"account": number.account, "msg_id": out.id, "delay": delay}
                )
                lane.pace.hold(self.clock() + delay)
                continue
            if verdict.kind == "transient":
                attempt += 1
                metrics.RETRIES.labels("transient").inc()
                if attempt >= self.settings.whatsapp_max_attempts:
                    raise GiveUp(f"not delivered: gave up after {attempt} attempts: {verdict.reason}", verdict.code)
                await self._retry_later(number.account, out.id, attempt, self._throttle_delay(attempt), verdict.reason)
                continue
            raise GiveUp(verdict.reason, verdict.code)

    async def _record(self, rec: SentRecord) -> None:
        assert self.sent is not None
        sent = self.sent
        await self._retrying("a send record", rec.id, lambda: sent.put(rec))

    async def _fail(self, held: Held, out: Outbound, rec: SentRecord, reason: str, part: int, code: int) -> None:
        account = out.account or held.account
        if out.session_id:
            await self._retrying(
                "a failed mark",
                out.id,
                lambda: publish_mark(
                    self.js,
                    session_id=out.session_id,
                    message_id=out.id,
                    part=part,
                    status="failed",
                    at=utcnow(),
                    account=account,
                    reason=reason,
                ),
            )
        await self._retrying(
            "delivery_failed",
            out.id,
            lambda: publish_failed(
                self.js, session_id=out.session_id, message_id=out.id, account=account, chat_id=out.chat_id, reason=reason
            ),
        )
        await self._given_up(held, rec, reason, self._record, metrics.FAILED.labels(held.account, str(code)))
