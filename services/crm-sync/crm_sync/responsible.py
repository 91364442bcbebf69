"""The router's ``crm_responsible`` mode asks here (``ol.crm.responsible``) who
the client's responsible manager is, and waits at most 0.5 s.

A client crm-sync has linked is answered from the links bucket (one KV read).
A client not linked yet - typically the very first message of a customer the
CRM already knows - is identified the way crm-sync will link it: by channel
identity, then by the phones and e-mail addresses of its profile (a shared
Telegram contact, the sender of a mail) and of what it wrote in this
conversation, normalised (E.164, lower case). The CRM is asked once per
identity (Bitrix24: one ``batch`` with ``crm.duplicate.findbycomm``, then one
``get``; built-in: its index), within ``responsible_timeout``; the answer is
cached, and a look-up that outlives the timeout still finishes and fills the
cache for the next ask (the no-answer reassignment, the next message).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter, Histogram

from crm_sync.backends.base import CrmBackend
from crm_sync.core import identity
from crm_sync.links import ClientLink, client_key
from crm_sync.sync import Users
from openlines import bus, subjects
from openlines.bus import Buckets, kv_get, read_subject
from openlines.envelopes import BAD_JSON, HistoryEntry
from openlines.state import ClientRecord
from openlines.state import client_key as router_client_key

log = logging.getLogger("crm_sync.responsible")

LATENCY = Histogram("openlines_crm_responsible_seconds", "Time to answer a responsible lookup")
ANSWERS = Counter("openlines_crm_responsible_total", "Responsible look-ups by where the answer came from", ["source"])
QUEUE_GROUP = "crm-sync"
CACHE_SIZE = 10_000
# CRM look-ups in flight at once: beyond it (a burst of new clients while the CRM is slow) a
# look-up answers "unknown" at once rather than queue behind the CRM's rate limit, which the
# event consumer needs too.
MAX_ASKING = 32
NEGATIVE_TTL = 30.0  # a client unknown to the CRM may be added there by hand: ask again sooner

_hist = msgspec.json.Decoder(HistoryEntry)


class Ask(msgspec.Struct, kw_only=True):
    client_id: str = ""
    channel: str = ""
    account: str = ""
    chat_id: str = ""
    session_id: str = ""  # the conversation being routed: what the client wrote in it identifies them too


_ask = msgspec.json.Decoder(Ask)

IdentityKey = tuple[str, tuple[str, ...], tuple[str, ...]]


class Responsible:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        buckets: Buckets,
        links: KeyValue,
        backend: CrmBackend,
        users: Users,
        timeout: float,
        *,
        cache_seconds: float = 300.0,
        phone_region: str = "",
    ) -> None:
        self.nc = nc
        self.js = js
        self.b = buckets
        self.links = links
        self.crm = backend
        self.users = users
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.region = phone_region
        self.sub: Subscription | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._cache: OrderedDict[IdentityKey, tuple[str, float]] = OrderedDict()  # -> (CRM user, expires)
        self._asking: dict[IdentityKey, asyncio.Task[str]] = {}  # one CRM look-up per identity at a time

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(subjects.CRM_RESPONSIBLE, queue=QUEUE_GROUP, cb=self._dispatch)
        await bus.flush_all(self.nc)  # the server knows we answer before we say we are up

    async def _dispatch(self, msg: Msg) -> None:
        # One task per request: a lookup that has to ask the CRM must not hold up the next one.
        task = asyncio.create_task(self._on_request(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
        for task in list(self._asking.values()):
            task.cancel()

    async def lookup(self, ask: Ask) -> str:
        """The operator id of the client's responsible manager, or "" - within ``timeout`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                if ask.client_id:
                    link, _ = await kv_get(self.links, client_key(ask.client_id), ClientLink)
                    if link is not None and (link.contact_id or link.lead_id or link.deal_id):
                        ANSWERS.labels("link").inc()
                        return self.users.operator(link.assigned_by)
                if not (ask.channel and ask.account and ask.chat_id):
                    return ""
                key = await self._identities(ask)
        except TimeoutError:
            ANSWERS.labels("late").inc()
            return ""
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            ANSWERS.labels("cache").inc()
            return self.users.operator(cached[0])
        task = self._asking.get(key)
        if task is None:
            if len(self._asking) >= MAX_ASKING:
                ANSWERS.labels("busy").inc()
                return ""
            task = asyncio.create_task(self._ask_crm(key))
            self._asking[key] = task
            task.add_done_callback(functools.partial(self._asked, key))
        # Not cancelled at our deadline: a look-up slower than the budget still fills the cache.
        done, _ = await asyncio.wait([task], timeout=max(0.0, deadline - loop.time()))
        if not done or task.cancelled() or task.exception() is not None:
            log.info("responsible lookup without an answer from the CRM in time", extra={"channel": ask.channel})
            ANSWERS.labels("late").inc()
            return ""
        ANSWERS.labels("crm").inc()
        return self.users.operator(task.result())

    def _asked(self, key: IdentityKey, task: asyncio.Task[str]) -> None:
        self._asking.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.info("responsible lookup in the CRM failed", extra={"error": repr(task.exception())[:200]})

    async def _identities(self, ask: Ask) -> IdentityKey:
        """The channel identity, and the phones / e-mail addresses known from the profile and this conversation."""
        code = identity.external_code(ask.channel, ask.account, ask.chat_id)
        ids = identity.Identities()
        channel = subjects.token(ask.channel, "channel")
        account = subjects.token(ask.account, "account")
        ck = subjects.chat_key(channel, account, ask.chat_id)
        record, _ = await kv_get(self.b.clients, router_client_key(channel, account, ck), ClientRecord)
        if record is not None:
            ids = identity.of_profile(record.profile.phone, record.profile.email, self.region)
        if ask.session_id:
            rows = await read_subject(self.js, subjects.STREAM_HIST, subjects.history(ask.session_id))
            texts = (h.text for h in (_hist.decode(data) for _, data in rows) if h.direction == "in")
            ids = ids.merge(identity.in_texts(texts, self.region))
        return code, ids.phones, ids.emails

    async def _ask_crm(self, key: IdentityKey) -> str:
        code, phones, emails = key
        found = await self.crm.identify(code, list(phones), list(emails))
        user = found.assigned_by if found is not None else ""
        ttl = self.cache_seconds if user else min(self.cache_seconds, NEGATIVE_TTL)
        self._cache[key] = (user, time.monotonic() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return user

    async def _on_request(self, msg: Msg) -> None:
        started = time.monotonic()
        try:
            ask = _ask.decode(msg.data)
        except BAD_JSON:
            await msg.respond(msgspec.json.encode({"operator_id": "", "error": "invalid request"}))
            return
        try:
            operator_id = await self.lookup(ask)
        except subjects.BadToken as exc:
            await msg.respond(msgspec.json.encode({"operator_id": "", "error": str(exc)}))
            return
        except Exception as exc:
            log.warning("responsible lookup failed", extra={"error": repr(exc)[:200]})
            operator_id = ""
        await msg.respond(msgspec.json.encode({"operator_id": operator_id}))
        LATENCY.observe(time.monotonic() - started)
