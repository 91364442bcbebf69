"""Helpers for the crm-sync tests: run crm-sync in-process, client messages
from other channels, and waiting for what crm-sync publishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from conftest import wait_for
from servers import creds
from support import events

from openlines import bus, subjects
from openlines.envelopes import ClientProfile, Inbound, SessionEvent, utcnow
from openlines.runner import Service, launch
from openlines.state import ClientRecord, Session, client_key

OPS = """
[operators.anna]
name = "Anna"
[operators.boris]
name = "Boris"
"""


def crm_line(crm: str = "", *, line_id: str = "sales", queue: str = "", ops: str = '"anna", "boris"') -> str:
    """A line fed by the demo widget and a Telegram bot, with the CRM binding on."""
    return (
        f'[[lines]]\nid = "{line_id}"\nname = "Sales"\n'
        'channels = [{ channel = "webchat", account = "demo" }, { channel = "telegram", account = "shopbot" }]\n'
        f"[lines.queue]\noperators = [{ops}]\n{queue}\n"
        f"[lines.crm]\nenabled = true\n{crm}\n"
    )


def telegram(user: str, text: str, msg: str, *, name: str = "", phone: str = "", email: str = "") -> Inbound:
    """A Telegram message as gateway-telegram would publish it (phone: a shared contact)."""
    return Inbound(
        id=f"telegram:shopbot:{msg}:{user}",
        channel="telegram",
        account="shopbot",
        chat_id=user,
        user_id=user,
        profile=ClientProfile(name=name, phone=phone, email=email),
        text=text,
        channel_msg_id=msg,
        received_at=utcnow(),
    )


@asynccontextmanager
async def running_crm_sync(url: str, **overrides: Any) -> AsyncIterator[Service[Any]]:
    from crm_sync.service import setup
    from crm_sync.settings import Settings

    defaults: dict[str, Any] = {"crm_rate": 200.0, "crm_backoff": 0.05, "crm_limit_retries": 2}
    svc = await launch(
        "crm-sync", Settings(nats_url=url, http_port=0, **{**creds("crm-sync"), **defaults, **overrides}), setup, first_attempts=5
    )
    try:
        yield svc
    finally:
        await svc.stop()


async def linked(nc: Any, session_id: str, timeout: float = 15) -> SessionEvent:
    async def probe() -> SessionEvent | None:
        return next((e for e in await events(nc, "crm_linked") if e.session_id == session_id), None)

    return await wait_for(probe, timeout=timeout, what=f"crm_linked for {session_id}")


async def session_of(nc: Any, channel: str, account: str, chat: str, line: str = "sales") -> Session | None:
    b = await bus.Buckets(nc.jetstream()).open()
    rec, _ = await bus.kv_get(b.clients, client_key(channel, account, subjects.chat_key(channel, account, chat)), ClientRecord)
    if rec is None or line not in rec.open_sessions:
        return None
    s, _ = await bus.kv_get(b.sessions, rec.open_sessions[line], Session)
    return s


async def opened(nc: Any, channel: str, account: str, chat: str) -> Session:
    async def probe() -> Session | None:
        return await session_of(nc, channel, account, chat)

    return await wait_for(probe, timeout=15, what=f"session of {channel}/{chat}")


async def assigned(nc: Any, channel: str, account: str, chat: str, other_than: str = "") -> Session:
    """The client's open session once it is offered to an operator."""

    async def probe() -> Session | None:
        s = await session_of(nc, channel, account, chat)
        return s if s is not None and s.operator_id and s.id != other_than else None

    return await wait_for(probe, timeout=15, what=f"session of {channel}/{chat} offered")
