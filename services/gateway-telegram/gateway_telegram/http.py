"""The webhook edge: ``POST /telegram/{account}``, one path per bot.

A request is handled top to bottom: find the bot -> check the secret header
-> read at most ``max_body`` bytes -> parse (aiogram ``Update``) -> normalise
-> keep the client's files (``keep.py``) -> publish with ``Nats-Msg-Id`` ->
answer 200 **only after the PubAck**.
NATS unreachable -> 503, so Telegram keeps the update and retries.
More requests than the replica takes at once (``OPENLINES_MAX_IN_FLIGHT``
being handled, ``OPENLINES_MAX_WAITING`` waiting) -> 503 with ``Retry-After``
before the body is read: nothing is stored and Telegram delivers it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import Counter

from gateway_telegram import metrics
from gateway_telegram.api import BotPool
from gateway_telegram.keep import InboundFiles
from gateway_telegram.normalise import CHANNEL, BadUpdate, normalise, parse_update, plain_text
from gateway_telegram.settings import Settings
from openlines import admission, bus
from openlines.edge import Edge, TooLarge, read_body
from openlines.envelopes import Inbound, utcnow

log = logging.getLogger("gateway_telegram.http")

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PATH = "/telegram/{account}"


# The answers of the hot path, encoded once: each is what web.json_response would have made of it.
_ANSWER = {duplicate: json.dumps({"ok": True, "duplicate": duplicate}).encode() for duplicate in (False, True)}
# Counters' label children resolved once (prometheus' labels() is a lock and a tuple per call).
_PUBLISHED = {duplicate: metrics.PUBLISHED.labels(str(duplicate).lower()) for duplicate in (False, True)}


def _answer(duplicate: bool) -> web.Response:
    return web.Response(body=_ANSWER[duplicate], content_type="application/json")


def webhook_path(account: str) -> str:
    return WEBHOOK_PATH.format(account=account)


class TelegramHttp:
    def __init__(self, settings: Settings, nc: NATS, js: JetStreamContext, pool: BotPool) -> None:
        self.settings = settings
        self.nc = nc
        self.js = js
        self.pool = pool
        self.edge = Edge(CHANNEL, lambda _status, code: metrics.REJECTED.labels(code).inc())
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._updates: dict[tuple[str, str], Counter] = {}  # (account, kind label) -> its UPDATES child
        self.admission = admission.Admission("telegram", settings.limits())
        self.files = InboundFiles(settings, js, pool)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(WEBHOOK_PATH, self.webhook)

    def _refuse(self, status: int, code: str, detail: str, account: str, headers: dict[str, str] | None = None) -> web.Response:
        return self.edge.refuse(status, code, detail, headers, account=account)

    async def webhook(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        bot = self.pool.account(account)
        if bot is None:
            return self._refuse(404, "unknown_bot", "no bot is configured for this webhook path", account)
        got = request.headers.get(SECRET_HEADER, "")
        if not secrets.compare_digest(got.encode("utf-8", "surrogateescape"), bot.secret.encode()):
            return self._refuse(401, "bad_secret", f"missing or wrong {SECRET_HEADER} header", account)
        return await self.edge.admitted(self.admission, self._handle, request, account, bot.bot_id, account=account)

    async def _handle(self, request: web.Request, account: str, bot_id: int) -> web.Response:
        try:
            body = await read_body(request, self.settings.max_body)
        except TooLarge as exc:
            return self._refuse(413, "too_large", str(exc), account)
        try:
            result = plain_text(account, bot_id, body, utcnow()) or normalise(account, bot_id, parse_update(body), utcnow())
        except BadUpdate as exc:
            return await self._dead_letter(account, body, exc.detail)
        except Exception:  # a body aiogram's types or our mapping choke on: kept, never a 500
            log.exception("update could not be normalised", extra={"channel": CHANNEL, "account": account})
            return await self._dead_letter(account, body, "the update could not be read")
        duplicate = False
        if result.inbound is not None:
            try:
                with self.edge.working():
                    inbound = result.inbound
                    bot = self.pool.bot(account)
                    if inbound.attachments and bot is not None:
                        # The client's files are fetched and kept before the message is published (keep.py says why).
                        inbound = await self.files.keep(account, bot, inbound)
                    duplicate = await self._publish(inbound)
            except Unavailable as exc:
                retry_after = admission.retry_after_header(self.settings.retry_after)
                return self._refuse(503, "unavailable", str(exc), account, retry_after)
        else:
            # Membership changes, reactions, join requests, polls, service messages: not a client's words.
            log.info("update ignored", extra={"channel": CHANNEL, "account": account, "kind": result.kind})
        if result.callback_query_id:
            self._answer_callback(account, result.callback_query_id)
        self._counted(account, result.kind.partition(":")[0]).inc()
        return _answer(duplicate)

    def _counted(self, account: str, kind: str) -> Counter:
        """The UPDATES counter of (account, kind), looked up once per pair (configured accounts, four kinds)."""
        child = self._updates.get((account, kind))
        if child is None:
            child = self._updates[(account, kind)] = metrics.UPDATES.labels(account, kind)
        return child

    async def _dead_letter(self, account: str, body: bytes, reason: str) -> web.Response:
        """An update Telegram sent (the secret matched) that cannot be read: kept as a dead letter, answered 200.

        A 4xx would make Telegram retry it for a day while the updates behind it wait; the
        dead letter keeps the body (its start) and the reason for whoever looks after the gateway.
        """
        key = hashlib.sha256(body).hexdigest()[:48]
        try:
            await bus.dead_letter(self.js, CHANNEL, account, key, reason, body, timeout=self.settings.publish_timeout)
        except Exception as exc:  # not even the dead letter is stored: Telegram must send it again
            log.warning("dead letter not stored", extra={"channel": CHANNEL, "account": account, "error": repr(exc)})
            retry_after = admission.retry_after_header(self.settings.retry_after)
            return self._refuse(503, "unavailable", "not stored; retry", account, retry_after)
        metrics.REJECTED.labels("dead_letter").inc()
        log.warning("unreadable update kept as a dead letter", extra={"channel": CHANNEL, "account": account, "reason": reason})
        return web.json_response({"ok": True, "dead_letter": reason})

    async def _publish(self, inbound: Inbound) -> bool:
        """Store the update in OL_IN; True when JetStream already had it."""
        if self.edge.stopping:
            raise Unavailable("gateway is stopping; retry")
        try:
            ack = await bus.publish_inbound(self.nc, self.js, inbound, timeout=self.settings.publish_timeout)
        except bus.BusUnavailable as exc:
            if exc.reason == "disconnected":  # Telegram retries on the 503
                metrics.REJECTED.labels("nats_disconnected").inc()
                raise Unavailable("message bus unavailable; retry") from None
            log.warning(
                "publish failed",
                extra={"channel": CHANNEL, "account": inbound.account, "msg_id": inbound.id, "error": repr(exc.error)},
            )
            raise Unavailable("message not stored; retry") from None
        duplicate = bool(ack.duplicate)
        _PUBLISHED[duplicate].inc()
        if log.isEnabledFor(logging.DEBUG):  # hot path: the published counter counts these
            log.debug(
                "update published",
                extra={
                    "channel": CHANNEL,
                    "account": inbound.account,
                    "msg_id": inbound.id,
                    "seq": ack.seq,
                    "duplicate": duplicate,
                },
            )
        return duplicate

    def _answer_callback(self, account: str, query_id: str) -> None:
        """Stop the client's button spinner; best effort, off the webhook's path."""
        bot = self.pool.bot(account)
        if bot is None:
            return

        async def answer() -> None:
            try:
                await bot.answer_callback_query(query_id, request_timeout=10)
            except Exception as exc:  # too old, network: the client's spinner times out by itself
                log.info("answerCallbackQuery failed", extra={"channel": CHANNEL, "account": account, "error": repr(exc)})

        task = asyncio.create_task(answer(), name=f"tg-answer-{query_id}")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def shutdown(self) -> None:
        """Refuse new updates (503: Telegram retries them elsewhere), let the in-flight ones answer."""
        await self.edge.drain(self.settings.publish_timeout + 1)
        if self._side_tasks:
            await asyncio.wait(self._side_tasks, timeout=5)


class Unavailable(Exception):
    """Nothing was stored: answer 503 so Telegram retries."""
