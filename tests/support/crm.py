"""Helpers for the crm-sync tests: run crm-sync in-process, client messages
from other channels, and waiting for what crm-sync publishes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from openlines import subjects
from openlines.envelopes import ClientProfile, Inbound, SessionEvent, utcnow
from openlines.runner import Service, launch
from openlines.state import Session
from support import events, held_session, line_block, operators_block, session_of
from support.servers import creds
from support.timing import wait_for

CRM_API_TOKEN = "crm-read-api-test-token-0123-Kq7Zt9Wm3xRv"  # what a caller of crm-sync's read API sends as Bearer

OPS = operators_block("anna", "boris")


def crm_line(crm: str = "", *, line_id: str = "sales", queue: str = "", ops: str = '"anna", "boris"') -> str:
    """A line fed by the demo widget and a Telegram bot, with the CRM binding on."""
    channels = '[{ channel = "webchat", account = "demo" }, { channel = "telegram", account = "shopbot" }]'
    return line_block(line_id, name="Sales", channels=channels, operators=ops, queue=queue, crm=f"enabled = true\n{crm}")


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

    defaults: dict[str, Any] = {"crm_rate": 200.0, "crm_backoff": 0.05, "crm_limit_retries": 2, "crm_api_token": CRM_API_TOKEN}
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


async def opened(nc: Any, channel: str, account: str, chat: str, line: str = "sales") -> Session:
    async def probe() -> Session | None:
        return await session_of(nc, chat, channel=channel, account=account, line=line)

    return await wait_for(probe, timeout=15, what=f"session of {channel}/{chat}")


async def assigned(nc: Any, channel: str, account: str, chat: str, other_than: str = "", line: str = "sales") -> Session:
    """The client's open session once it is offered to an operator."""
    return await held_session(nc, chat, channel=channel, account=account, line=line, other_than=other_than)


# -- one CRM under test: the built-in CRM or the Bitrix24 peer, counted the same way -----------------

BITRIX_USERS = '{"7": "anna", "8": "boris"}'  # the peer's CRM users as operators


class CrmUnderTest:
    """What a fault test needs of either backend: crm-sync settings for it, and its records counted."""

    def __init__(self, backend: str, nc: Any, peer: Any = None) -> None:
        self.backend = backend
        self.nc = nc
        self.peer = peer

    def settings(self) -> dict[str, Any]:
        """Overrides for running_crm_sync."""
        if self.peer is None:
            return {}
        return {"crm_backend": "bitrix24", "bitrix24_webhook": self.peer.webhook, "crm_users": BITRIX_USERS}

    def env(self) -> dict[str, str]:
        """The same, as a crm-sync process's environment."""
        if self.peer is None:
            return {"OPENLINES_CRM_BACKEND": "builtin"}
        return {
            "OPENLINES_CRM_BACKEND": "bitrix24",
            "OPENLINES_BITRIX24_WEBHOOK": self.peer.webhook,
            "OPENLINES_CRM_USERS": BITRIX_USERS,
        }

    def user(self, operator_id: str) -> str:
        """The CRM user id of an operator."""
        return {"anna": "7", "boris": "8"}[operator_id] if self.peer is not None else operator_id

    async def builtin(self) -> Any:
        from crm_sync.backends.builtin import BuiltinBackend

        return await BuiltinBackend.open(self.nc.jetstream())

    async def records(self, kind: str, origin: str) -> list[str]:
        """Ids of the contacts / leads / deals made for one chat (origin = its channel identity)."""
        if self.peer is not None:
            rows = {"contact": self.peer.contacts, "lead": self.peer.leads, "deal": self.peer.deals}[kind]()
            return [str(r["ID"]) for r in rows if r.get("ORIGIN_ID") == origin]
        return [e.id for e in await (await self.builtin()).entities(kind) if e.origin == origin]

    async def activities(self, session_id: str) -> list[dict[str, Any]]:
        """The session's activities: id, completed, responsible."""
        if self.peer is not None:
            return [
                {"id": str(a["ID"]), "completed": a.get("COMPLETED") == "Y", "responsible": str(a.get("RESPONSIBLE_ID", ""))}
                for a in self.peer.activities()
                if a.get("ORIGIN_ID") == f"ol-session|{session_id}"
            ]
        return [
            {"id": a.id, "completed": a.completed, "responsible": a.responsible}
            for a in await (await self.builtin()).activities(session_id)
        ]

    async def add_contact(self, name: str, manager: str, phone: str = "", email: str = "") -> str:
        """A customer the CRM knows already, with ``manager`` (an operator id) responsible."""
        if self.peer is not None:
            fields: dict[str, Any] = {"NAME": name, "ASSIGNED_BY_ID": self.user(manager)}
            if phone:
                fields["PHONE"] = [{"VALUE": phone, "VALUE_TYPE": "WORK"}]
            if email:
                fields["EMAIL"] = [{"VALUE": email, "VALUE_TYPE": "WORK"}]
            return str(self.peer.add_contact(**fields))
        from crm_sync.backends.base import Entity

        builtin = await self.builtin()
        return str(
            await builtin.create(
                Entity(
                    kind="contact",
                    name=name,
                    phones=[phone] if phone else [],
                    emails=[email] if email else [],
                    assigned_by=manager,
                )
            )
        )


@asynccontextmanager
async def crm_under_test(backend: str, nc: Any) -> AsyncIterator[CrmUnderTest]:
    if backend == "builtin":
        yield CrmUnderTest(backend, nc)
        return
    from peers.bitrix24 import running_bitrix24

    async with running_bitrix24() as peer:
        yield CrmUnderTest(backend, nc, peer)


async def crm_linked_events(nc: Any, session_id: str) -> list[SessionEvent]:
    return [e for e in await events(nc, "crm_linked") if e.session_id == session_id]


async def crm_caught_up(nc: Any, durable: str = "crm-sync") -> bool:
    """crm-sync's consumer has every event delivered and acknowledged."""
    from nats.js.errors import NotFoundError

    try:
        info = await nc.jetstream().consumer_info(subjects.STREAM_EVT, durable)
    except NotFoundError:
        return False  # crm-sync has not started yet
    return info.num_pending == 0 and info.num_ack_pending == 0
