"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TypeVar

import msgspec
from aiohttp import web
from nats.aio.msg import Msg

from gateway_webchat.availability import Availability, State
from gateway_webchat.files import Links
from gateway_webchat.http import WebchatHttp
from gateway_webchat.lines import BoundAccounts
from gateway_webchat.normalise import CHANNEL, inbound_id
from gateway_webchat.push import Hub, OutboundConsumer, frame
from gateway_webchat.settings import Settings
from openlines import subjects
from openlines.envelopes import QueuePlace, Seen, Typing
from openlines.runner import Service

_typing = msgspec.json.Decoder(Typing)
_place = msgspec.json.Decoder(QueuePlace)
_seen = msgspec.json.Decoder(Seen)


_Told = TypeVar("_Told", QueuePlace, Seen)


def addressed(msg: Msg, decoder: msgspec.json.Decoder[_Told]) -> tuple[str, str, _Told] | None:
    """``ol.<kind>.webchat.<account>.<chat key>``: (account, chat key, body) when the body names the visitor the
    subject does; None for a body that does not decode or names another chat (dropped: nothing to tell)."""
    try:
        body = decoder.decode(msg.data)
    except msgspec.DecodeError:
        return None
    account, key = msg.subject.split(".")[-2:]
    if subjects.chat_key(CHANNEL, account, body.chat_id) != key:
        return None
    return account, key, body


@dataclass(frozen=True, slots=True)
class Webchat:
    """The parts of a running gateway (tests and operators' debugging look at them)."""

    hub: Hub
    consumer: OutboundConsumer
    edge: WebchatHttp
    bound: BoundAccounts


WEBCHAT = web.AppKey("webchat", Webchat)
LINES_WAIT = 10.0  # seconds start-up waits for the line configs before serving anyway


async def setup(svc: Service[Settings]) -> None:
    hub = Hub()
    links = Links(svc.settings.webchat_secret, svc.settings.webchat_file_link_ttl)
    consumer = OutboundConsumer(svc.js, hub, links)
    bound = BoundAccounts(svc.js, CHANNEL)

    def tell(account: str, state: State) -> None:
        told = frame(type="availability", **state.fields())
        for sock in hub.sockets():
            if sock.account == account:
                sock.send(told)

    availability = Availability(svc.js, bound, tell)
    edge = WebchatHttp(svc.settings, svc.nc, svc.js, hub, bound, links, availability)
    edge.routes(svc.app)
    svc.app[WEBCHAT] = Webchat(hub=hub, consumer=consumer, edge=edge, bound=bound)
    svc.spawn(consumer.run(svc.stopping), name="webchat-outbound")
    svc.spawn(bound.run(svc.stopping), name="webchat-lines")
    svc.spawn(availability.run(svc.stopping), name="webchat-availability")

    async def operator_typing(msg: Msg) -> None:
        # ol.typing.out.webchat.<account>.<chat key>: tell that visitor's sockets on this replica
        try:
            typing = _typing.decode(msg.data)
        except msgspec.DecodeError:
            return
        hub.tell(msg.subject.rsplit(".", 1)[-1], frame(type="typing", operator=typing.operator_name[:100]))

    await svc.nc.subscribe(subjects.typing_out_channel(CHANNEL), cb=operator_typing)

    async def queue_place(msg: Msg) -> None:
        # ol.queue.webchat.<account>.<chat key>: a waiting visitor's place, from the router
        told = addressed(msg, _place)
        if told is not None and 0 <= told[2].place < 2**31:
            hub.tell_place(told[1], told[2].place)

    await svc.nc.subscribe(subjects.queue_place_channel(CHANNEL), cb=queue_place)

    async def operator_saw(msg: Msg) -> None:
        # ol.seen.webchat.<account>.<chat key>: the operator answering has the visitor's messages up to one on screen
        told = addressed(msg, _seen)
        if told is None:
            return
        account, key, seen = told
        mine = inbound_id(account, seen.chat_id, "")  # the transcript ids of this visitor's messages start so
        if seen.upto.startswith(mine) and len(seen.upto) > len(mine):
            hub.tell(key, frame(type="read", id=seen.upto[len(mine) :]))

    await svc.nc.subscribe(subjects.seen_channel(CHANNEL), cb=operator_saw)
    # Serve sockets only once the bound accounts are known; a slow start is
    # still served, with /readyz and a 1013 "reconnect shortly" until then.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(bound.loaded.wait(), timeout=LINES_WAIT)

    async def ready() -> str | None:
        return consumer.ready() or bound.ready()

    svc.ready_check(ready)
    # on_stop runs in reverse order: close the sockets first, then stop the consumer.
    svc.on_stop(consumer.stop)
    svc.on_stop(edge.shutdown)
