"""Build the configured backend from settings."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from crm_sync.backends.base import CrmBackend
from crm_sync.backends.bitrix24 import Bitrix24Backend, Bitrix24Client, Tokens
from crm_sync.backends.builtin import BuiltinBackend
from crm_sync.links import OAUTH_KEY
from crm_sync.settings import Settings
from openlines.bus import kv_get


async def build(settings: Settings, js: JetStreamContext, links: KeyValue) -> CrmBackend:
    if settings.crm_backend == "builtin":
        return await BuiltinBackend.open(js, settings.replicas)
    tokens: Tokens | None = None
    if not settings.bitrix24_webhook:
        # Refresh tokens rotate: the newest pair is kept in the links bucket for every replica and restart.
        stored, _ = await kv_get(links, OAUTH_KEY, Tokens)
        tokens = stored or Tokens(access_token=settings.bitrix24_access_token, refresh_token=settings.bitrix24_refresh_token)

    async def keep(new: Tokens) -> None:
        await links.put(OAUTH_KEY, msgspec.json.encode(new))

    client = Bitrix24Client(
        webhook=settings.bitrix24_webhook,
        portal=settings.bitrix24_portal,
        tokens=tokens,
        oauth_url=settings.bitrix24_oauth_url,
        client_id=settings.bitrix24_client_id,
        client_secret=settings.bitrix24_client_secret,
        on_tokens=keep,
        rate=settings.crm_rate,
        burst=settings.crm_burst,
        timeout=settings.crm_timeout,
        limit_retries=settings.crm_limit_retries,
        backoff=settings.crm_backoff,
    )
    return Bitrix24Backend(client, activity_type=settings.bitrix24_activity_type)
