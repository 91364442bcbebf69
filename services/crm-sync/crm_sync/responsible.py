"""The router's ``crm_responsible`` mode asks here (``ol.crm.responsible``) who
the client's responsible manager is, and waits at most 0.5 s.

The answer comes from the links bucket (one KV read); only a client crm-sync
has never linked is looked up in the CRM, bounded by ``responsible_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.kv import KeyValue
from prometheus_client import Histogram

from crm_sync.backends.base import CrmBackend
from crm_sync.core.identity import external_code
from crm_sync.links import ClientLink, client_key
from crm_sync.sync import Users
from openlines import subjects
from openlines.bus import kv_get
from openlines.envelopes import BAD_JSON

log = logging.getLogger("crm_sync.responsible")

LATENCY = Histogram("openlines_crm_responsible_seconds", "Time to answer a responsible lookup")
QUEUE_GROUP = "crm-sync"


class Ask(msgspec.Struct, kw_only=True):
    client_id: str = ""
    channel: str = ""
    account: str = ""
    chat_id: str = ""


_ask = msgspec.json.Decoder(Ask)


class Responsible:
    def __init__(self, nc: NATS, links: KeyValue, backend: CrmBackend, users: Users, timeout: float) -> None:
        self.nc = nc
        self.links = links
        self.crm = backend
        self.users = users
        self.timeout = timeout
        self.sub: Subscription | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(subjects.CRM_RESPONSIBLE, queue=QUEUE_GROUP, cb=self._dispatch)

    async def _dispatch(self, msg: Msg) -> None:
        # One task per request: a lookup that has to ask the CRM must not hold up the next one.
        task = asyncio.create_task(self._on_request(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def lookup(self, ask: Ask) -> str:
        """The operator id of the client's responsible manager, or ""."""
        if ask.client_id:
            link, _ = await kv_get(self.links, client_key(ask.client_id), ClientLink)
            if link is not None and (link.contact_id or link.lead_id or link.deal_id):
                return self.users.operator(link.assigned_by)
        if not (ask.channel and ask.account and ask.chat_id):
            return ""
        code = external_code(ask.channel, ask.account, ask.chat_id)
        try:
            async with asyncio.timeout(self.timeout):
                found = await self.crm.find_by_origin("contact", code) or await self.crm.find_by_origin("lead", code)
        except Exception as exc:  # a slow or absent CRM must never hold routing up
            log.info("responsible lookup without an answer from the CRM", extra={"error": repr(exc)[:200]})
            return ""
        return self.users.operator(found.assigned_by) if found else ""

    async def _on_request(self, msg: Msg) -> None:
        started = time.monotonic()
        try:
            ask = _ask.decode(msg.data)
        except BAD_JSON:
            await msg.respond(msgspec.json.encode({"operator_id": "", "error": "invalid request"}))
            return
        try:
            operator_id = await self.lookup(ask)
        except Exception as exc:
            log.warning("responsible lookup failed", extra={"error": repr(exc)[:200]})
            operator_id = ""
        await msg.respond(msgspec.json.encode({"operator_id": operator_id}))
        LATENCY.observe(time.monotonic() - started)
