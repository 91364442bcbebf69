"""aiogram ``Bot`` objects for the configured bots, sharing one HTTP session."""

from __future__ import annotations

from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer

from gateway_telegram.bots import BotAccount


class BotPool:
    """account -> (BotAccount, aiogram Bot). One connection pool for all bots."""

    def __init__(self, bots: list[BotAccount], api_base: str, timeout: float) -> None:
        self.session = AiohttpSession(api=TelegramAPIServer.from_base(api_base), timeout=timeout)
        self.accounts: dict[str, BotAccount] = {b.account: b for b in bots}
        self._bots: dict[str, Bot] = {b.account: Bot(b.token, session=self.session) for b in bots}

    def account(self, account: str) -> BotAccount | None:
        return self.accounts.get(account)

    def bot(self, account: str) -> Bot | None:
        return self._bots.get(account)

    async def close(self) -> None:
        await self.session.close()
