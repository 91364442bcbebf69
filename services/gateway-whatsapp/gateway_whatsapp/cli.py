"""``openlines whatsapp check-webhook | numbers`` (via the ``openlines.cli`` entry point).

``check-webhook`` plays Meta against the gateway's public address: the
verification handshake with each app's verify token, a notification signed
with its app secret (it must be answered 200) and one signed with a wrong
secret (it must be refused) - the three things a webhook needs before Meta
will deliver to it. ``numbers`` asks the Graph API for each number's profile
with its token (a revoked or mistyped token shows here, not on the first reply).

Reads the accounts from ``OPENLINES_WHATSAPP_ACCOUNTS`` (or ``--accounts``).
"""

from __future__ import annotations

import argparse
import os
import secrets
from typing import Any

import aiohttp
import msgspec

from gateway_whatsapp.accounts import VARIABLE, Accounts, AccountsError, parse_accounts
from gateway_whatsapp.graph import Graph, GraphError, GraphUnavailable
from gateway_whatsapp.http import SIGNATURE_HEADER, signature, webhook_path
from gateway_whatsapp.settings import DEFAULT_API_BASE, DEFAULT_API_VERSION, DEFAULT_MEDIA_HOSTS

# A notification with nothing in it: the gateway answers 200 and publishes nothing.
EMPTY_NOTIFICATION = b'{"object":"whatsapp_business_account","entry":[]}'


def _accounts(args: argparse.Namespace) -> Accounts:
    return parse_accounts(args.accounts or os.environ.get(VARIABLE, ""))


async def _check_app(http: aiohttp.ClientSession, base: str, app_id: str, verify_token: str, secret: str) -> list[str]:
    """Problems of one app's webhook (empty: it works)."""
    url = base + webhook_path(app_id)
    problems: list[str] = []
    challenge = secrets.token_hex(8)
    query = {"hub.mode": "subscribe", "hub.verify_token": verify_token, "hub.challenge": challenge}
    async with http.get(url, params=query) as resp:
        text = await resp.text()
        if resp.status != 200 or text != challenge:
            problems.append(f"verification: answered {resp.status} {text[:120]!r}, expected the challenge back")
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secret, EMPTY_NOTIFICATION)}
    async with http.post(url, data=EMPTY_NOTIFICATION, headers=headers) as resp:
        if resp.status != 200:
            problems.append(f"signed notification: answered {resp.status} {(await resp.text())[:120]!r}, expected 200")
    forged = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(secrets.token_hex(16), EMPTY_NOTIFICATION)}
    async with http.post(url, data=EMPTY_NOTIFICATION, headers=forged) as resp:
        if resp.status not in (401, 403):
            problems.append(f"forged signature: answered {resp.status}, expected 401 - the gateway must refuse it")
    return problems


async def _check_webhook(args: argparse.Namespace) -> int:
    try:
        accounts = _accounts(args)
    except AccountsError as exc:
        print(f"openlines whatsapp: {exc}")
        return 2
    base = args.public_url.rstrip("/")
    if not base.startswith("https://"):
        print("openlines whatsapp: warning: Meta calls only https:// webhooks with a valid certificate")
    apps = [a for a in accounts.apps.values() if not args.app or a.id == args.app]
    if not apps:
        print(f"openlines whatsapp: no app {args.app!r} in {VARIABLE}")
        return 2
    failed = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for app in apps:
            try:
                problems = await _check_app(http, base, app.id, app.verify_token, app.app_secret)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problems = [f"not reachable: {type(exc).__name__}: {exc}"]
            numbers = ", ".join(n.account for n in accounts.numbers.values() if n.app == app.id)
            if problems:
                failed += 1
                print(f"{app.id}: FAILED at {base}{webhook_path(app.id)}")
                for p in problems:
                    print(f"  - {p}")
            else:
                print(f"{app.id}: ok - {base}{webhook_path(app.id)} (numbers: {numbers})")
                print("  in the Meta app: Webhooks > WhatsApp Business Account > callback URL as above, the verify token,")
                print("  and subscribe the 'messages' field")
    return 1 if failed else 0


async def _numbers(args: argparse.Namespace) -> int:
    try:
        accounts = _accounts(args)
    except AccountsError as exc:
        print(f"openlines whatsapp: {exc}")
        return 2
    graph = Graph(
        args.api_base or os.environ.get("OPENLINES_WHATSAPP_API_BASE", DEFAULT_API_BASE),
        os.environ.get("OPENLINES_WHATSAPP_API_VERSION", DEFAULT_API_VERSION),
        timeout=30.0,
        media_timeout=30.0,
        media_hosts=frozenset({DEFAULT_MEDIA_HOSTS}),
    )
    failed = 0
    try:
        for number in accounts.numbers.values():
            if args.account and number.account != args.account:
                continue
            try:
                info: dict[str, Any] = await graph.phone_number(number)
            except GraphError as exc:
                failed += 1
                f = exc.failure
                print(f"{number.account} ({number.phone_number_id}): FAILED: {f.message} (code {f.code}) {f.details}".rstrip())
                continue
            except GraphUnavailable as exc:
                failed += 1
                print(f"{number.account} ({number.phone_number_id}): FAILED: {exc}")
                continue
            shown = {k: info[k] for k in ("display_phone_number", "verified_name", "quality_rating", "throughput") if k in info}
            print(f"{number.account} ({number.phone_number_id}): {msgspec.json.encode(shown).decode()}")
    finally:
        await graph.close()
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add ``openlines whatsapp ...`` (the ``openlines.cli`` entry point)."""
    wa = subparsers.add_parser("whatsapp", help="WhatsApp numbers: webhook check, number profiles")
    sub = wa.add_subparsers(dest="whatsapp_cmd", required=True)

    c = sub.add_parser("check-webhook", help="play Meta against the gateway: verification, a signed and a forged notification")
    c.add_argument("--public-url", required=True, help="how Meta reaches the gateway, e.g. https://hooks.example.com")
    c.add_argument("--app", help="only this app (default: every app in OPENLINES_WHATSAPP_ACCOUNTS)")
    c.add_argument("--accounts", help=f"the accounts (inline JSON or a .json/.toml path); default ${VARIABLE}")
    c.set_defaults(run=_check_webhook, is_async=True)

    n = sub.add_parser("numbers", help="each number's profile from the Graph API (checks its access token)")
    n.add_argument("--account", help="only this number's account")
    n.add_argument("--accounts", help=f"the accounts (inline JSON or a .json/.toml path); default ${VARIABLE}")
    n.add_argument("--api-base", help=f"the Graph API (default $OPENLINES_WHATSAPP_API_BASE or {DEFAULT_API_BASE})")
    n.set_defaults(run=_numbers, is_async=True)
