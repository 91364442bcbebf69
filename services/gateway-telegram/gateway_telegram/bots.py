"""The bots one process serves: ``OPENLINES_TELEGRAM_BOTS`` -> a list of :class:`BotAccount`.

The setting is either inline JSON or the path of a ``.json`` / ``.toml`` file::

    [{"account": "sales", "token": "123456:AA...", "secret": "long-random-string"}]

    # bots.toml
    [[bots]]
    account = "sales"
    token = "123456:AA..."
    secret = "long-random-string"

Errors name the entry and the field, never the token or the secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from openlines import secretcheck
from openlines.listsetting import read_list_setting

ACCOUNT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOKEN = re.compile(r"^[0-9]{1,20}:[A-Za-z0-9_-]{20,}$")
# Telegram's own rule for secret_token is 1-256 of these characters; we ask
# for at least 16 so that the header is a real secret.
SECRET = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


class BotsError(ValueError):
    """The bot list is unusable; the message says where."""


@dataclass(frozen=True, slots=True)
class BotAccount:
    account: str  # the channel account: ol.in.telegram.<account>, [[lines.channels]] account
    token: str
    secret: str  # sent by Telegram in X-Telegram-Bot-Api-Secret-Token
    bot_id: int = field(init=False, compare=False)  # the token's number: part of every envelope id, so read once

    def __post_init__(self) -> None:
        object.__setattr__(self, "bot_id", int(self.token.split(":", 1)[0]))

    def __repr__(self) -> str:  # never print the token or the secret
        return f"BotAccount(account={self.account!r}, bot_id={self.bot_id})"


def parse_bots(value: str) -> list[BotAccount]:
    """Parse and validate the bot list (inline JSON or a file path)."""
    data = read_list_setting(value, "OPENLINES_TELEGRAM_BOTS", BotsError)
    entries = data.get("bots") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise BotsError("OPENLINES_TELEGRAM_BOTS must list at least one bot: [{account, token, secret}, ...]")
    bots: list[BotAccount] = []
    seen_accounts: set[str] = set()
    seen_bots: set[int] = set()
    for i, entry in enumerate(entries):
        where = f"bots[{i}]"
        if not isinstance(entry, dict):
            raise BotsError(f"{where}: must be an object with account, token and secret")
        unknown = sorted(set(entry) - {"account", "token", "secret"})
        if unknown:
            raise BotsError(f"{where}: unknown field(s) {', '.join(unknown)}")
        account, token, secret = entry.get("account"), entry.get("token"), entry.get("secret")
        if not isinstance(account, str) or not ACCOUNT.match(account):
            raise BotsError(f"{where}.account: must be 1-64 characters of A-Z a-z 0-9 _ -")
        where = f"bots[{i}] (account {account})"
        if not isinstance(token, str) or not TOKEN.match(token):
            raise BotsError(f"{where}.token: not a bot token as BotFather gives it (<digits>:<letters>)")
        if not isinstance(secret, str) or not SECRET.match(secret):
            raise BotsError(f"{where}.secret: must be 16-256 characters of A-Z a-z 0-9 _ -")
        weak = secretcheck.problem(secret, secretcheck.MIN_WEBHOOK_CHARS)
        if weak:
            raise BotsError(f"{where}.secret: not a usable secret: {weak}; {secretcheck.MAKE_ONE}")
        bot = BotAccount(account=account, token=token, secret=secret)
        if account in seen_accounts:
            raise BotsError(f"{where}: account listed twice")
        if bot.bot_id in seen_bots:
            raise BotsError(f"{where}: the same bot is listed under two accounts")
        seen_accounts.add(account)
        seen_bots.add(bot.bot_id)
        bots.append(bot)
    return bots
