"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from crm_sync.backends.base import CrmBackend
from crm_sync.backends.builtin import BuiltinBackend
from crm_sync.backends.factory import build
from crm_sync.claims import Claims
from crm_sync.consumer import EventConsumer
from crm_sync.http import ReadApi
from crm_sync.links import open_links
from crm_sync.responsible import Responsible
from crm_sync.settings import Settings
from crm_sync.sync import Syncer, Users
from openlines.bus import Buckets
from openlines.runner import Service


@dataclass(frozen=True, slots=True)
class CrmSync:
    backend: CrmBackend
    consumer: EventConsumer
    responsible: Responsible


CRM_SYNC = web.AppKey("crm_sync", CrmSync)


async def setup(svc: Service[Settings]) -> None:
    s = svc.settings
    buckets = await Buckets(svc.js).open()
    links = await open_links(svc.js, s.replicas)
    backend = await build(s, svc.js, links)
    users = Users(s.users(), identity_when_unmapped=s.crm_backend == "builtin")
    syncer = Syncer(svc.js, buckets, links, backend, users, phone_region=s.phone_region)
    consumer = EventConsumer(
        svc.js,
        syncer,
        s.consumer,
        s.ack_wait,
        Claims(links, lease=s.ack_wait),
        concurrency=s.crm_concurrency,
        attempt_timeout=s.crm_attempt_timeout,
    )
    responsible = Responsible(
        svc.nc,
        svc.js,
        buckets,
        links,
        backend,
        users,
        s.responsible_timeout,
        cache_seconds=s.responsible_cache_seconds,
        phone_region=s.phone_region,
    )
    await responsible.start()
    ReadApi(backend if isinstance(backend, BuiltinBackend) else None, links, svc.settings.crm_api_token).routes(svc.app)
    svc.app[CRM_SYNC] = CrmSync(backend=backend, consumer=consumer, responsible=responsible)
    task = svc.spawn(consumer.run(), "crm-events")

    async def ready() -> str | None:
        if consumer.waiting_reason:
            return f"events wait for the CRM: {consumer.waiting_reason}"
        return None

    async def drain() -> None:
        await responsible.stop()
        await consumer.stop()
        await asyncio.wait([task], timeout=s.shutdown_timeout)
        await backend.close()

    svc.ready_check(ready)
    svc.on_stop(drain)
