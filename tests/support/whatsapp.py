"""Helpers for the WhatsApp gateway tests: accounts, the local Cloud API, the gateway in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from peers.whatsapp_api import FakeWhatsApp

from openlines import bus, subjects
from openlines.envelopes import Inbound, SessionEvent
from openlines.runner import Service, launch
from support.servers import creds

APP = "main"
APP_SECRET = "5f3c9a1d7e2b4c6a8f0e1d3c5b7a9e2f"  # the shape of a Meta app secret: 32 hex characters
VERIFY_TOKEN = "verify-Kq7Zt9Wm3xRv-0123456789"
SHOP = {"account": "shop_wa", "phone_number_id": "106540352242922", "token": "EAAG" + "shoptoken0123456789abcdefXYZ" * 3}
SALES = {"account": "sales_wa", "phone_number_id": "106540352242933", "token": "EAAG" + "salestoken0123456789abcdXYZ" * 3}
CLIENT = "16505551234"  # a client's WhatsApp id (their phone number without the +)


def accounts_json(**app: str) -> str:
    return json.dumps(
        {
            "apps": [{"id": APP, "app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN, **app}],
            "numbers": [SHOP, SALES],
        }
    )


@asynccontextmanager
async def fake_whatsapp() -> AsyncIterator[FakeWhatsApp]:
    peer = FakeWhatsApp()
    for n in (SHOP, SALES):
        peer.add_number(n["phone_number_id"], n["token"])
    await peer.start()
    try:
        yield peer
    finally:
        await peer.stop()


def gateway_settings(nats_url: str, api_base: str, **overrides: Any) -> Any:
    from gateway_whatsapp.settings import Settings

    values: dict[str, Any] = {
        "nats_url": nats_url,
        "http_port": 0,
        "whatsapp_accounts": accounts_json(),
        "whatsapp_api_base": api_base,
        "whatsapp_backoff": 0.05,
        "whatsapp_backoff_max": 0.2,
        "whatsapp_ack_wait": 5.0,
        "whatsapp_timeout": 5.0,
        "whatsapp_media_timeout": 5.0,
        "shutdown_timeout": 3.0,
        **creds("gateway-whatsapp"),
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_gateway(nats_url: str, peer: FakeWhatsApp, **overrides: Any) -> AsyncIterator[Service[Any]]:
    """The gateway in-process on a free port; the peer's webhook points at it (as the Meta app's callback URL)."""
    from gateway_whatsapp.service import WHATSAPP, setup
    from support.timing import wait_for

    svc = await launch("gateway-whatsapp", gateway_settings(nats_url, peer.base, **overrides), setup, first_attempts=5)
    try:
        await wait_for(lambda: svc.app[WHATSAPP].sender.ready() is None, what="the outbound consumer")
        peer.configure(f"http://127.0.0.1:{svc.port}/whatsapp/{APP}", APP_SECRET, VERIFY_TOKEN)
        yield svc
    finally:
        await svc.stop()


async def inbound_of(nc: NATS, account: str = SHOP["account"]) -> list[Inbound]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("whatsapp", account))
    return [msgspec.json.decode(data, type=Inbound) for _, data in rows]


async def events_of(nc: NATS, kind: str) -> list[SessionEvent]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_EVT, subjects.event(kind))
    return [msgspec.json.decode(data, type=SessionEvent) for _, data in rows]


def whatsapp_line(
    account: str = SHOP["account"], ops: str = '"anna"', line_id: str = "wa", templates: str = "", extra: str = ""
) -> str:
    """A line fed by a WhatsApp number; ``templates``: [[lines.channels.templates]] blocks."""
    return (
        '[operators.anna]\nname = "Anna"\n'
        f'[[lines]]\nid = "{line_id}"\nname = "WhatsApp support"\n'
        f"[lines.queue]\noperators = [{ops}]\nmax_chats_per_operator = 5\n{extra}\n"
        f'[[lines.channels]]\nchannel = "whatsapp"\naccount = "{account}"\n{templates}\n'
    )


FOLLOW_UP = (
    '[[lines.channels.templates]]\nname = "follow_up"\nlanguage = "en_US"\n'
    'text = "Hello {{1}}, we have news about your order {{2}}. Reply to continue."\n'
    'variables = ["client name", "order number"]\ntitle = "Follow-up on an order"\n'
)
