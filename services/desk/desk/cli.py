"""``openlines desk token create|list|revoke``: API tokens for scripts (docs/admin.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from desk.tokens import TOKEN_ROLES, TokenStore, new_token, open_bucket, parse_duration
from openlines import bus
from openlines.envelopes import utcnow


async def _store(args: argparse.Namespace) -> tuple[Any, TokenStore]:
    url = str(args.nats or os.environ.get("OPENLINES_NATS_URL", "nats://127.0.0.1:4222"))
    nc = await bus.connect(url, "openlines-cli", first_attempts=args.attempts)
    replicas = int(os.environ.get("OPENLINES_REPLICAS", "1"))
    return nc, TokenStore(nc.jetstream(), await open_bucket(nc.jetstream(), replicas))


async def _create(args: argparse.Namespace) -> int:
    try:
        expires_in = parse_duration(args.expires_in) if args.expires_in else None
        token, record = new_token(args.name, args.role, expires_in)
    except ValueError as exc:
        print(f"openlines desk token create: {exc}")
        return 2
    nc, store = await _store(args)
    try:
        await store.add(record)
    finally:
        await nc.close()
    until = f"expires {record.expires_at.isoformat(timespec='seconds')}" if record.expires_at else "no expiry"
    print(f"token {record.id} ({record.name!r}, role {record.role}, {until}) created. It is shown only now; keep it secret:")
    print(token)
    return 0


async def _list(args: argparse.Namespace) -> int:
    nc, store = await _store(args)
    try:
        tokens = await store.all()
    finally:
        await nc.close()
    now = utcnow()
    for t in tokens:
        if t.expires_at is None:
            until = "never"
        else:
            until = t.expires_at.isoformat(timespec="seconds") + (" (expired)" if t.expired(now) else "")
        print(f"{t.id}  {t.role:<10}  {t.created_at.isoformat(timespec='seconds')}  expires {until:<36}  {t.name}")
    if not tokens:
        print("no tokens")
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    nc, store = await _store(args)
    try:
        done = await store.revoke(args.id)
    finally:
        await nc.close()
    print(f"token {args.id}: revoked" if done else f"token {args.id}: no such token")
    return 0 if done else 1


def register(sub: Any) -> None:
    """Entry point (group openlines.cli): adds ``openlines desk ...``."""
    desk = sub.add_parser("desk", help="the desk: API tokens for scripts").add_subparsers(dest="desk_cmd", required=True)
    tokens = desk.add_parser("token", help="API tokens for /api/v1").add_subparsers(dest="token_cmd", required=True)
    c = tokens.add_parser("create", help="create a token and print it once")
    c.add_argument("name", help="what the token is for, e.g. 'nightly report'")
    c.add_argument("--role", choices=TOKEN_ROLES, required=True, help="the role the token acts as")
    c.add_argument("--expires-in", metavar="DURATION", help="refuse the token after this long: 90m, 12h, 30d (default: never)")
    c.set_defaults(run=_create, is_async=True)
    ls = tokens.add_parser("list", help="list tokens (never their secrets)")
    ls.set_defaults(run=_list, is_async=True)
    r = tokens.add_parser("revoke", help="revoke a token by its id")
    r.add_argument("id", help="the token id (the 12 hex characters after olt_)")
    r.set_defaults(run=_revoke, is_async=True)
