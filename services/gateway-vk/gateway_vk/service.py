"""Wiring: what ``setup(service)`` adds to the shared runner."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from aiohttp import web

from gateway_vk.deliver import Deliverer
from gateway_vk.http import CallbackHttp
from gateway_vk.media import Media
from gateway_vk.profiles import Profiles
from gateway_vk.reads import Reads, open_bucket
from gateway_vk.settings import Community, Settings
from gateway_vk.vkapi import CommunityApi
from openlines.runner import Service
from openlines.typing_relay import TypingRelay


@dataclass(frozen=True, slots=True)
class Vk:
    """The parts of a running gateway (tests and operators' debugging look at them)."""

    communities: dict[str, Community]
    senders: dict[str, CommunityApi]
    lookups: dict[str, CommunityApi]
    edge: CallbackHttp
    deliverer: Deliverer


VK = web.AppKey("vk", Vk)


async def setup(svc: Service[Settings]) -> None:
    settings = svc.settings
    communities = settings.communities()
    senders: dict[str, CommunityApi] = {}
    lookups: dict[str, CommunityApi] = {}
    for account, community in communities.items():
        senders[account] = CommunityApi(community, settings, name="send")
        # Lookups (users.get, confirmation code) have their own threads and a
        # short HTTP timeout, so a busy send queue never delays a webhook answer.
        lookups[account] = CommunityApi(community, settings, name="lookup", timeout=max(1.0, 2 * settings.profile_timeout))
        lookups[account].share_bucket(senders[account])
    profiles = Profiles(ttl=settings.profile_ttl, timeout=settings.profile_timeout)
    media = Media(settings, svc.js)
    reads = Reads(svc.js, await open_bucket(svc.js, ttl=settings.vk_sent_ttl, replicas=settings.replicas))
    edge = CallbackHttp(settings, svc.nc, svc.js, communities, lookups, profiles, media, reads)
    edge.routes(svc.app)
    deliverer = Deliverer(settings, svc.js, senders, media, reads)
    svc.app[VK] = Vk(communities=communities, senders=senders, lookups=lookups, edge=edge, deliverer=deliverer)
    svc.spawn(deliverer.run(), name="vk-outbound")

    def typing(account: str, chat_id: str) -> Awaitable[object] | None:
        # An operator typing: "typing..." in the client's dialog with the community (VK shows it ~10 s).
        api = senders.get(account)
        if api is None or not chat_id.lstrip("-").isdigit():
            return None
        return api.call("messages.setActivity", {"peer_id": chat_id, "type": "typing"})

    relay = TypingRelay(svc.nc, "vk", typing)
    await relay.start()

    async def ready() -> str | None:
        return deliverer.ready()

    async def close_pools() -> None:
        for api in (*senders.values(), *lookups.values()):
            api.close()

    svc.ready_check(ready)
    # on_stop runs in reverse order: refuse new callbacks, finish deliveries, then drop the threads.
    svc.on_stop(close_pools)
    svc.on_stop(relay.stop)
    svc.on_stop(media.close)
    svc.on_stop(deliverer.stop)
    svc.on_stop(edge.shutdown)
