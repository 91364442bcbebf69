"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from aiogram.types import Update
from aiohttp import web

from gateway_telegram.api import BotPool
from gateway_telegram.bots import parse_bots
from gateway_telegram.deliver import chat_ref
from gateway_telegram.http import TelegramHttp
from gateway_telegram.sender import Sender
from gateway_telegram.settings import Settings
from openlines.runner import Service
from openlines.typing_relay import TypingRelay


@dataclass(frozen=True, slots=True)
class Telegram:
    """The parts of a running gateway (tests and debugging look at them)."""

    pool: BotPool
    edge: TelegramHttp
    sender: Sender


TELEGRAM = web.AppKey("telegram", Telegram)


async def setup(svc: Service[Settings]) -> None:
    bots = parse_bots(svc.settings.telegram_bots)
    # aiogram's types build their validators lazily: do it now, not on the first webhook.
    Update.model_validate({"update_id": 0, "message": {"message_id": 0, "date": 0, "chat": {"id": 0, "type": "private"}}})
    pool = BotPool(bots, svc.settings.telegram_api_base, svc.settings.telegram_timeout)
    edge = TelegramHttp(svc.settings, svc.nc, svc.js, pool)
    edge.routes(svc.app)
    sender = Sender(svc.settings, svc.nc, svc.js, pool)
    svc.app[TELEGRAM] = Telegram(pool=pool, edge=edge, sender=sender)
    svc.spawn(sender.run(), name="telegram-outbound")

    def typing(account: str, chat_id: str) -> Awaitable[object] | None:
        # An operator typing: "typing..." in the client's chat for up to 5 s (or until the reply arrives).
        bot = pool.bot(account)
        return bot.send_chat_action(chat_id=chat_ref(chat_id), action="typing") if bot is not None else None

    relay = TypingRelay(svc.nc, "telegram", typing)
    await relay.start()
    svc.on_stop(relay.stop)

    async def ready() -> str | None:
        return sender.ready()

    svc.ready_check(ready)
    # on_stop runs in reverse order: refuse webhooks first, then stop sending, then close HTTP clients.
    svc.on_stop(pool.close)
    svc.on_stop(sender.stop)
    svc.on_stop(edge.shutdown)
