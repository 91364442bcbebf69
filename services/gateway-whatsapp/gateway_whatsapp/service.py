"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway_whatsapp.accounts import Accounts
from gateway_whatsapp.graph import Graph
from gateway_whatsapp.http import WhatsAppHttp
from gateway_whatsapp.media import ClientFiles
from gateway_whatsapp.sender import Sender
from gateway_whatsapp.settings import Settings
from openlines.runner import Service


@dataclass(frozen=True, slots=True)
class WhatsApp:
    """The parts of a running gateway (tests and debugging look at them)."""

    accounts: Accounts
    graph: Graph
    edge: WhatsAppHttp
    sender: Sender
    files: ClientFiles


WHATSAPP = web.AppKey("whatsapp", WhatsApp)


def graph_of(settings: Settings) -> Graph:
    return Graph(
        settings.whatsapp_api_base,
        settings.whatsapp_api_version,
        timeout=settings.whatsapp_timeout,
        media_timeout=settings.whatsapp_media_timeout,
        media_hosts=settings.media_hosts(),
    )


async def setup(svc: Service[Settings]) -> None:
    s = svc.settings
    accounts = s.accounts()
    graph = graph_of(s)
    files = ClientFiles(
        svc.js,
        graph,
        max_bytes=s.whatsapp_max_download,
        concurrency=s.whatsapp_media_concurrency,
        max_age=s.files_max_age_days * 86400,
        replicas=s.replicas,
    )
    edge = WhatsAppHttp(s, svc.nc, svc.js, accounts, files)
    edge.routes(svc.app)
    sender = Sender(s, svc.nc, svc.js, accounts, graph)
    svc.app[WHATSAPP] = WhatsApp(accounts=accounts, graph=graph, edge=edge, sender=sender, files=files)
    svc.spawn(sender.run(), name="whatsapp-outbound")

    async def ready() -> str | None:
        return sender.ready()

    svc.ready_check(ready)
    # on_stop runs in reverse order: refuse webhooks first, then stop sending, then close the HTTP client.
    svc.on_stop(graph.close)
    svc.on_stop(sender.stop)
    svc.on_stop(edge.shutdown)
