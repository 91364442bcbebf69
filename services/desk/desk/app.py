"""Wiring: KV buckets, the live hub, routes and static files."""

from __future__ import annotations

from pathlib import Path

from desk import admin, clients, conversations
from desk.auth import Signer
from desk.http import DESK, Desk, add_routes, api_errors, known_hosts, security_headers
from desk.index import ConversationIndex
from desk.live import Hub
from desk.reads import Reader
from desk.settings import Settings
from desk.slamail import SlaMailer
from openlines.bus import Buckets
from openlines.runner import Service

STATIC = Path(__file__).parent / "static"


async def setup(svc: Service[Settings]) -> None:
    buckets = await Buckets(svc.js).open()
    reader = Reader(svc.js, buckets)
    hub = Hub(
        svc.nc,
        reader,
        Signer(svc.settings.cookie_secret).stamp,
        heartbeat_seconds=svc.settings.desk_heartbeat_seconds,
        replicas=svc.settings.replicas,
    )
    await hub.start()
    svc.spawn(hub.watch_accounts(), "desk-account-watch")
    svc.spawn(hub.watch_sla(), "desk-sla-watch")
    if svc.settings.sla_smtp_host:
        svc.spawn(SlaMailer(svc.js, reader, svc.settings).run(), "desk-sla-mail")
    svc.on_stop(hub.stop)

    async def live_subscribed() -> str | None:
        return None if hub.subscribed else "not subscribed to session events or account changes"

    svc.ready_check(live_subscribed)
    index = ConversationIndex(
        svc.js, max_messages=svc.settings.search_max_messages, max_sessions=svc.settings.search_max_sessions
    )
    await index.start()
    reader.preview = index.preview
    svc.on_stop(index.stop)
    desk = svc.app[DESK] = Desk(svc.settings, svc.nc, reader, hub, index)
    await desk.files()  # creates the file store, or brings it to the configured age
    svc.app.middlewares.append(known_hosts)
    svc.app.middlewares.append(api_errors)
    svc.app.on_response_prepare.append(security_headers)
    add_routes(svc.app)
    conversations.add_routes(svc.app)
    clients.add_routes(svc.app)
    await admin.setup(svc)  # admin pages, /api/v1 and /stats
    svc.app.router.add_static("/static", STATIC, append_version=False)
