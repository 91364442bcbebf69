"""``openlines telegram set-webhook | info | delete-webhook`` against the fake Bot API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support.telegram import SALES, SUPPORT, bots_json, fake_telegram

from openlines.cli import main


async def openlines(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))  # main() runs its own event loop


async def test_set_webhook_registers_every_bot_with_its_secret_then_info_and_delete(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENLINES_TELEGRAM_BOTS", bots_json())
    async with fake_telegram() as peer:
        monkeypatch.setenv("OPENLINES_TELEGRAM_API_BASE", peer.base)
        assert await openlines("telegram", "set-webhook", "--public-url", "https://tg.example.com/") == 0
        for bot in (SUPPORT, SALES):
            hook = peer.webhooks[bot["token"]]
            assert hook.url == f"https://tg.example.com/telegram/{bot['account']}"
            assert hook.secret == bot["secret"]
            assert hook.allowed_updates == ["message", "edited_message", "callback_query"]
        out = capsys.readouterr().out
        assert "support_bot (bot 111111): webhook set to https://tg.example.com/telegram/support_bot" in out
        assert SUPPORT["secret"] not in out and SUPPORT["token"] not in out

        peer.webhooks[SUPPORT["token"]].pending = 3
        peer.webhooks[SUPPORT["token"]].last_error_date = 1700000000
        peer.webhooks[SUPPORT["token"]].last_error_message = "Wrong response from the webhook: 503 Service Unavailable"
        assert await openlines("telegram", "info", "--account", "support_bot") == 0
        out = capsys.readouterr().out
        assert "pending_update_count=3" in out and "503 Service Unavailable" in out and "sales_bot" not in out

        assert await openlines("telegram", "delete-webhook", "--account", "sales_bot") == 0
        assert peer.webhooks[SALES["token"]].url == "" and peer.webhooks[SUPPORT["token"]].url != ""


async def test_cli_reports_an_unknown_account_and_a_rejected_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENLINES_TELEGRAM_BOTS", bots_json())
    async with fake_telegram() as peer:
        monkeypatch.setenv("OPENLINES_TELEGRAM_API_BASE", peer.base)
        assert await openlines("telegram", "info", "--account", "nobody") == 2
        assert "no bot with account 'nobody'" in capsys.readouterr().out
        revoked: Any = [
            {"account": "old", "token": "333333:CCHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0", "secret": "rev0ked-bot-secret-7Kq9Zt"}
        ]
        assert await openlines("telegram", "info", "--bots", bots_json(revoked)) == 1
        assert "old (bot 333333): FAILED" in capsys.readouterr().out
