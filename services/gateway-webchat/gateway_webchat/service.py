"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway_webchat.http import WebchatHttp
from gateway_webchat.push import Hub, OutboundConsumer
from gateway_webchat.settings import Settings
from openlines.runner import Service


@dataclass(frozen=True, slots=True)
class Webchat:
    """The parts of a running gateway (tests and operators' debugging look at them)."""

    hub: Hub
    consumer: OutboundConsumer
    edge: WebchatHttp


WEBCHAT = web.AppKey("webchat", Webchat)


async def setup(svc: Service[Settings]) -> None:
    hub = Hub()
    consumer = OutboundConsumer(svc.js, hub)
    edge = WebchatHttp(svc.settings, svc.nc, svc.js, hub)
    edge.routes(svc.app)
    svc.app[WEBCHAT] = Webchat(hub=hub, consumer=consumer, edge=edge)
    svc.spawn(consumer.run(svc.stopping), name="webchat-outbound")

    async def ready() -> str | None:
        return consumer.ready()

    svc.ready_check(ready)
    # on_stop runs in reverse order: close the sockets first, then stop the consumer.
    svc.on_stop(consumer.stop)
    svc.on_stop(edge.shutdown)
