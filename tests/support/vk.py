"""Helpers for the VK gateway tests: the fake VK API, the gateway in-process, reading what it published."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from peers.vk_api import CallbackSender, FakeVk

from gateway_vk import Settings, setup
from openlines import bus, runner, subjects
from openlines.envelopes import Inbound, SessionEvent
from support.servers import creds

ACCOUNT = "shop"
GROUP_ID = 555
TOKEN = "vk1.a.community-token-for-tests"
SECRET = "callback-secret-0123-Kq7Zt9Wm3xRv"
CONFIRMATION = "3b1f9c7e"
OTHER_ACCOUNT = "news"
OTHER_GROUP = 777
OTHER_TOKEN = "vk1.a.other-community-token"


def groups_json(*, confirmation: str = CONFIRMATION) -> str:
    return json.dumps(
        [
            {"account": ACCOUNT, "group_id": GROUP_ID, "token": TOKEN, "secret": SECRET, "confirmation": confirmation},
            {"account": OTHER_ACCOUNT, "group_id": OTHER_GROUP, "token": OTHER_TOKEN, "secret": "other-secret-456"},
        ]
    )


def fake_vk(**kw: Any) -> FakeVk:
    return FakeVk(tokens={TOKEN: GROUP_ID, OTHER_TOKEN: OTHER_GROUP}, **kw)


def settings(nats_url: str, api_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        **creds("gateway-vk"),
        "http_port": 0,
        "vk_groups": groups_json(),
        "vk_api_url": api_url,
        "vk_file_hosts": api_url,  # the local peer serves the files and takes the uploads too
        "publish_timeout": 1.0,
        "profile_timeout": 0.5,
        "retry_base": 0.02,
        "retry_max": 0.2,
        "redeliver_delay": 0.2,
        "ack_wait": 5.0,
        "shutdown_timeout": 3.0,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_gateway(nats_url: str, api_url: str, **overrides: Any) -> AsyncIterator[runner.Service[Settings]]:
    svc = await runner.launch("gateway-vk", settings(nats_url, api_url, **overrides), setup, first_attempts=5)
    try:
        yield svc
    finally:
        await svc.stop()


def sender(http: aiohttp.ClientSession, svc: runner.Service[Settings], account: str = ACCOUNT) -> CallbackSender:
    group, secret = (GROUP_ID, SECRET) if account == ACCOUNT else (OTHER_GROUP, "other-secret-456")
    return CallbackSender(http, f"http://127.0.0.1:{svc.port}/vk/{account}", group, secret)


async def published(nc: NATS, account: str = ACCOUNT) -> list[Inbound]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("vk", account))
    return [msgspec.json.decode(data, type=Inbound) for _, data in rows]


async def in_count(nc: NATS) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_IN)
    return int(info.state.messages)


async def failures(nc: NATS) -> list[SessionEvent]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_EVT, subjects.event("delivery_failed"))
    return [msgspec.json.decode(data, type=SessionEvent) for _, data in rows]


def connections(svc: runner.Service[Settings], nc: NATS, server: Any) -> str:
    """For a failed wait on a core-NATS signal: was each end connected, and what did the server log last."""
    tail = server.log.read_text(errors="replace")[-1500:] if server.log.exists() else "(no log)"
    return f"gateway connected: {svc.nc.is_connected}, test's connection: {nc.is_connected}; nats-server log ends: {tail}"
