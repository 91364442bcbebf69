"""Helpers for the Telegram gateway tests: bots, the fake Bot API, the gateway in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from peers.telegram_api import FakeTelegram

from openlines import bus, subjects
from openlines.envelopes import Inbound
from openlines.runner import Service, launch
from support import line_block, operators_block
from support.servers import creds

BOTS = [
    {
        "account": "support_bot",
        "token": "111111:AAHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0",
        "secret": "s3cret-support-0123456789-Kq7Zt9Wm3xRv",
    },
    {
        "account": "sales_bot",
        "token": "222222:BBHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0",
        "secret": "s3cret-sales-0123456789ab-Kq7Zt9Wm3xRv",
    },
]
SUPPORT = BOTS[0]
SALES = BOTS[1]


def bots_json(bots: list[dict[str, str]] | None = None) -> str:
    return json.dumps(bots or BOTS)


@asynccontextmanager
async def fake_telegram() -> AsyncIterator[FakeTelegram]:
    peer = FakeTelegram()
    for b in BOTS:
        peer.add_bot(b["token"])
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


def gateway_settings(nats_url: str, api_base: str, **overrides: Any) -> Any:
    from gateway_telegram.settings import Settings

    values: dict[str, Any] = {
        "nats_url": nats_url,
        **creds("gateway-telegram"),
        "http_port": 0,
        "telegram_bots": bots_json(),
        "telegram_api_base": api_base,
        "telegram_backoff": 0.05,
        "telegram_backoff_max": 0.2,
        "telegram_ack_wait": 5.0,
        "telegram_timeout": 5.0,
        "shutdown_timeout": 3.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_gateway(
    nats_url: str, peer: FakeTelegram, *, set_webhooks: bool = True, **overrides: Any
) -> AsyncIterator[Service[Any]]:
    """The gateway in-process on a free port; each bot's webhook points at it (as set-webhook does)."""
    from gateway_telegram.service import TELEGRAM, setup
    from support.timing import wait_for

    svc = await launch("gateway-telegram", gateway_settings(nats_url, peer.base, **overrides), setup, first_attempts=5)
    try:
        await wait_for(lambda: svc.app[TELEGRAM].sender.ready() is None, what="the outbound consumer")
        if set_webhooks:
            for b in BOTS:
                hook = peer.webhooks[b["token"]]
                hook.url = f"http://127.0.0.1:{svc.port}/telegram/{b['account']}"
                hook.secret = b["secret"]
        yield svc
    finally:
        await svc.stop()


async def inbound_of(nc: NATS, account: str = "support_bot") -> list[Inbound]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("telegram", account))
    return [msgspec.json.decode(data, type=Inbound) for _, data in rows]


async def stream_size(nc: NATS, stream: str = subjects.STREAM_IN) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.messages)


def telegram_line(account: str = "support_bot", ops: str = '"anna"', line_id: str = "tg", extra: str = "") -> str:
    channels = f'[{{ channel = "telegram", account = "{account}" }}]'
    queue = f"max_chats_per_operator = 5\n{extra}"  # extra: more keys of the queue
    return operators_block("anna") + line_block(line_id, name="Telegram support", channels=channels, operators=ops, queue=queue)
