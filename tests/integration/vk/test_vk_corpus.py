"""Callback API events VK and its SDKs really send (../shared/corpus/vk), through the real gateway.

VK sends our community's ``group_id`` and ``secret`` with every event; the
corpus bodies come from other communities, so each is sent with ours put in.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from peers.vk_api import FakeVk
from support.corpus import params
from support.timing import wait_for
from support.vk import CONFIRMATION, GROUP_ID, SECRET, fake_vk, in_count, published, running_gateway

from openlines import runner

# file -> (what the gateway answers, the text published or None when nothing is)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "vksdk__confirmation_with_secret.json": (CONFIRMATION, None),
    "vkbottle__message_new_with_client_info.json": ("ok", "test"),  # API 5.103+: object.message + client_info
    "vksdk__message_new_legacy_chat_kick_user.json": ("ok", None),  # pre-5.103 flat message, a chat service action
    "vkbottle__wall_post_new.json": ("ok", None),  # no event_id (older API), not a message
    "devvk_docs__group_join.json": ("ok", None),  # no event_id, not a message
}


def load(path: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return body


@pytest.fixture
async def gw(nats_server: Any, nc: Any) -> AsyncIterator[runner.Service[Any]]:
    vk: FakeVk = fake_vk(users={1: ("Pavel", "Durov")})
    await vk.start()
    try:
        async with running_gateway(nats_server.url, vk.url) as svc:
            yield svc
    finally:
        await vk.stop()


@pytest.mark.parametrize("path", params("vk", ".json"))
async def test_every_corpus_event_is_answered_as_vk_expects_and_messages_are_published_once(gw: Any, nc: Any, path: Path) -> None:
    body = {**load(path), "group_id": GROUP_ID, "secret": SECRET}
    answer, text = EXPECTED.get(path.name, ("ok", None))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # VK resends what it thinks failed: the second copy must change nothing
            async with http.post(f"http://127.0.0.1:{gw.port}/vk/shop", json=body) as r:
                assert (r.status, await r.text()) == (200, answer), path.name
    if text is None:
        assert await in_count(nc) == 0
        return
    [msg] = await wait_for(lambda: published(nc), what="the message published")
    assert msg.text == text and msg.channel == "vk" and msg.account == "shop"
    assert await in_count(nc) == 1
