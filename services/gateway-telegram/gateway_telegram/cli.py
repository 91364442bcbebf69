"""``openlines telegram set-webhook | delete-webhook | info`` (via the ``openlines.cli`` entry point).

Reads the bots from ``OPENLINES_TELEGRAM_BOTS`` (or ``--bots``) and talks to
``OPENLINES_TELEGRAM_API_BASE`` (default https://api.telegram.org).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from aiogram.exceptions import AiogramError

from gateway_telegram.api import BotPool
from gateway_telegram.bots import BotAccount, BotsError, parse_bots
from gateway_telegram.http import webhook_path
from gateway_telegram.normalise import ALLOWED_UPDATES
from gateway_telegram.settings import DEFAULT_API_BASE


def _selected(args: argparse.Namespace) -> list[BotAccount]:
    value = args.bots or os.environ.get("OPENLINES_TELEGRAM_BOTS", "")
    bots = parse_bots(value)
    if args.account:
        bots = [b for b in bots if b.account == args.account]
        if not bots:
            raise BotsError(f"no bot with account {args.account!r} in OPENLINES_TELEGRAM_BOTS")
    return bots


def _pool(args: argparse.Namespace, bots: list[BotAccount]) -> BotPool:
    base = args.api_base or os.environ.get("OPENLINES_TELEGRAM_API_BASE", DEFAULT_API_BASE)
    return BotPool(bots, base, timeout=30.0)


async def _each(args: argparse.Namespace, action: Any) -> int:
    try:
        bots = _selected(args)
    except BotsError as exc:
        print(f"openlines telegram: {exc}")
        return 2
    pool = _pool(args, bots)
    failed = 0
    try:
        for b in bots:
            bot = pool.bot(b.account)
            assert bot is not None
            try:
                print(f"{b.account} (bot {b.bot_id}): {await action(b, bot)}")
            except AiogramError as exc:
                failed += 1
                print(f"{b.account} (bot {b.bot_id}): FAILED: {exc}")
    finally:
        await pool.close()
    return 1 if failed else 0


async def _set_webhook(args: argparse.Namespace) -> int:
    public = args.public_url.rstrip("/")
    if not public.startswith("https://"):
        # Telegram itself refuses it; a local Bot API server (and the test peer) may not.
        print("openlines telegram: warning: Telegram calls only https:// webhooks on ports 443, 80, 88 or 8443")

    async def action(b: BotAccount, bot: Any) -> str:
        url = public + webhook_path(b.account)
        await bot.set_webhook(
            url=url,
            secret_token=b.secret,
            allowed_updates=list(ALLOWED_UPDATES),
            max_connections=args.max_connections,
            drop_pending_updates=args.drop_pending or None,
        )
        return f"webhook set to {url}"

    return await _each(args, action)


async def _delete_webhook(args: argparse.Namespace) -> int:
    async def action(b: BotAccount, bot: Any) -> str:
        await bot.delete_webhook(drop_pending_updates=args.drop_pending or None)
        return "webhook deleted"

    return await _each(args, action)


async def _info(args: argparse.Namespace) -> int:
    async def action(b: BotAccount, bot: Any) -> str:
        info = await bot.get_webhook_info()
        lines = [
            f"url={info.url or '(none)'}",
            f"pending_update_count={info.pending_update_count}",
            f"max_connections={info.max_connections}",
            f"allowed_updates={','.join(info.allowed_updates or [])}",
        ]
        if info.last_error_message:
            when = info.last_error_date.isoformat() if info.last_error_date else "?"
            lines.append(f"last_error={info.last_error_message!r} at {when}")
        return " ".join(lines)

    return await _each(args, action)


def register(subparsers: Any) -> None:
    """Add ``openlines telegram ...`` (the ``openlines.cli`` entry point)."""
    tg = subparsers.add_parser("telegram", help="Telegram bots: webhooks")
    sub = tg.add_subparsers(dest="telegram_cmd", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--account", help="only this bot (default: every bot in OPENLINES_TELEGRAM_BOTS)")
        p.add_argument("--bots", help="bot list (inline JSON or a .json/.toml path); default $OPENLINES_TELEGRAM_BOTS")
        p.add_argument("--api-base", help=f"Bot API server (default $OPENLINES_TELEGRAM_API_BASE or {DEFAULT_API_BASE})")

    s = sub.add_parser("set-webhook", help="point each bot's webhook at this gateway, with its secret")
    s.add_argument("--public-url", required=True, help="how Telegram reaches the gateway, e.g. https://tg.example.com")
    s.add_argument("--max-connections", type=int, default=40, help="parallel webhook connections Telegram may open (1-100)")
    s.add_argument("--drop-pending", action="store_true", help="drop updates Telegram holds for the bot")
    common(s)
    s.set_defaults(run=_set_webhook, is_async=True)

    d = sub.add_parser("delete-webhook", help="stop webhook delivery for each bot")
    d.add_argument("--drop-pending", action="store_true", help="drop updates Telegram holds for the bot")
    common(d)
    d.set_defaults(run=_delete_webhook, is_async=True)

    i = sub.add_parser("info", help="getWebhookInfo: URL, pending updates, last error")
    common(i)
    i.set_defaults(run=_info, is_async=True)
