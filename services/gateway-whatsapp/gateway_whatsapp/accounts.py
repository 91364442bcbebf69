"""The Meta apps and phone numbers one process serves: ``OPENLINES_WHATSAPP_ACCOUNTS``.

Inline JSON (starts with ``{``) or the path of a ``.json`` / ``.toml`` file::

    # whatsapp.toml
    [[apps]]
    id = "main"                    # the webhook path /whatsapp/main
    app_secret = "..."             # App settings > Basic > App secret: the key of X-Hub-Signature-256
    verify_token = "..."           # what you type as "Verify token" in the app's webhook settings

    [[numbers]]
    account = "shop_wa"            # the channel account: [[lines.channels]] account, ol.in.whatsapp.<account>
    phone_number_id = "106540352242922"
    token = "EAAG..."              # a system user's access token with whatsapp_business_messaging
    app = "main"                   # the app whose webhook brings this number's messages (optional with one app)

A Meta app has one webhook URL for every number of its business accounts, so
the path names the app (whose secret checks the signature) and each message
is routed by the ``phone_number_id`` it carries. Errors name the entry and the
field, never a token or a secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from openlines import secretcheck
from openlines.listsetting import read_list_setting

VARIABLE = "OPENLINES_WHATSAPP_ACCOUNTS"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PHONE_NUMBER_ID = re.compile(r"^[0-9]{1,32}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.|=-]{20,4096}$")


class AccountsError(ValueError):
    """The list is unusable; the message says where."""


@dataclass(frozen=True, slots=True)
class App:
    id: str
    app_secret: str
    verify_token: str

    def __repr__(self) -> str:  # never print the secret or the verify token
        return f"App(id={self.id!r})"


@dataclass(frozen=True, slots=True)
class Number:
    account: str
    phone_number_id: str
    token: str
    app: str

    def __repr__(self) -> str:
        return f"Number(account={self.account!r}, phone_number_id={self.phone_number_id!r}, app={self.app!r})"


@dataclass(frozen=True, slots=True)
class Accounts:
    apps: dict[str, App] = field(default_factory=dict)
    numbers: dict[str, Number] = field(default_factory=dict)  # account -> number
    by_phone_id: dict[str, Number] = field(default_factory=dict)

    def number(self, account: str) -> Number | None:
        return self.numbers.get(account)


def _fields(where: str, entry: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise AccountsError(f"{where}: must be a table/object with {', '.join(sorted(allowed))}")
    unknown = sorted(str(k) for k in set(entry) - allowed)
    if unknown:
        raise AccountsError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    return entry


def _secret(where: str, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise AccountsError(f"{where}.{what}: must be set")
    weak = secretcheck.problem(value, secretcheck.MIN_WEBHOOK_CHARS)
    if weak:
        raise AccountsError(f"{where}.{what}: not a usable secret: {weak}")
    return value


def parse_accounts(value: str) -> Accounts:
    """Parse and check ``OPENLINES_WHATSAPP_ACCOUNTS`` (inline JSON or a file path)."""
    data = read_list_setting(value, VARIABLE, AccountsError)
    if not isinstance(data, dict):
        raise AccountsError(f'{VARIABLE} must be an object with apps and numbers: {{"apps": [...], "numbers": [...]}}')
    _fields(VARIABLE, data, {"apps", "numbers"})
    raw_apps, raw_numbers = data.get("apps"), data.get("numbers")
    if not isinstance(raw_apps, list) or not raw_apps:
        raise AccountsError(f"{VARIABLE}: apps must list at least one Meta app: [{{id, app_secret, verify_token}}]")
    if not isinstance(raw_numbers, list) or not raw_numbers:
        raise AccountsError(f"{VARIABLE}: numbers must list at least one phone number: [{{account, phone_number_id, token}}]")
    apps: dict[str, App] = {}
    for i, entry in enumerate(raw_apps):
        where = f"apps[{i}]"
        e = _fields(where, entry, {"id", "app_secret", "verify_token"})
        app_id = e.get("id")
        if not isinstance(app_id, str) or not _ID.match(app_id):
            raise AccountsError(f"{where}.id: must be 1-64 characters of A-Z a-z 0-9 _ - (it is the webhook path)")
        where = f"apps[{i}] (id {app_id})"
        if app_id in apps:
            raise AccountsError(f"{where}: app listed twice")
        secret = _secret(where, e.get("app_secret"), "app_secret")
        verify = _secret(where, e.get("verify_token"), "verify_token")
        apps[app_id] = App(id=app_id, app_secret=secret, verify_token=verify)
    numbers: dict[str, Number] = {}
    by_phone: dict[str, Number] = {}
    for i, entry in enumerate(raw_numbers):
        where = f"numbers[{i}]"
        e = _fields(where, entry, {"account", "phone_number_id", "token", "app"})
        account = e.get("account")
        if not isinstance(account, str) or not _ID.match(account):
            raise AccountsError(f"{where}.account: must be 1-64 characters of A-Z a-z 0-9 _ -")
        where = f"numbers[{i}] (account {account})"
        phone_id = e.get("phone_number_id")
        if isinstance(phone_id, int) and not isinstance(phone_id, bool):
            phone_id = str(phone_id)
        if not isinstance(phone_id, str) or not _PHONE_NUMBER_ID.match(phone_id):
            raise AccountsError(f"{where}.phone_number_id: the number's id in WhatsApp Manager (digits), not the phone number")
        token = e.get("token")
        if not isinstance(token, str) or not _TOKEN.match(token):
            raise AccountsError(f"{where}.token: not an access token (at least 20 characters, no spaces)")
        app = e.get("app", "")
        if not isinstance(app, str):
            raise AccountsError(f"{where}.app: must be the id of one of the apps")
        if not app:
            if len(apps) > 1:
                raise AccountsError(f"{where}.app: required when there are several apps (one of {', '.join(apps)})")
            app = next(iter(apps))
        if app not in apps:
            raise AccountsError(f"{where}.app: no app {app!r} (one of {', '.join(apps)})")
        if account in numbers:
            raise AccountsError(f"{where}: account listed twice")
        if phone_id in by_phone:
            raise AccountsError(f"{where}: phone_number_id {phone_id} is listed under two accounts")
        number = Number(account=account, phone_number_id=phone_id, token=token, app=app)
        numbers[account] = number
        by_phone[phone_id] = number
    return Accounts(apps=apps, numbers=numbers, by_phone_id=by_phone)
