"""A VK client and an operator end to end: fake VK -> gateway -> real router -> operator reply -> gateway -> fake VK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from peers.vk_api import FakeVk
from support import apply_lines, history, running_router, session_of
from support.timing import wait_for
from support.vk import ACCOUNT, fake_vk, running_gateway, sender

from gateway_vk.core.outbound import random_id
from openlines.commands import Reply, SetStatus, call
from openlines.state import Session

LINES = f"""
[operators.anna]
name = "Anna"

[[lines]]
id = "vk-support"
name = "VK support"
channels = [{{ channel = "vk", account = "{ACCOUNT}" }}]
[lines.queue]
operators = ["anna"]
"""


@pytest.fixture
async def vk() -> AsyncIterator[FakeVk]:
    fake = fake_vk(users={1001: ("Ivan", "Petrov")})
    await fake.start()
    yield fake
    await fake.stop()


async def assigned(nc: Any, peer: int) -> Session | None:
    s = await session_of(nc, str(peer), channel="vk", account=ACCOUNT, line="vk-support")
    return s if s is not None and s.status == "assigned" else None


async def test_a_vk_client_and_an_operator_talk_and_resends_never_double(nats_server: Any, nc: Any, vk: FakeVk) -> None:
    await apply_lines(nc, LINES)
    async with aiohttp.ClientSession() as http, running_router(nats_server.url):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        async with running_gateway(nats_server.url, vk.url) as gw:
            cb = sender(http, gw)
            first = cb.message_new("Hello, is my order ready?", from_id=1001, event_id="ev-a")
            assert await cb.post(first) == (200, "ok")
            session = await wait_for(lambda: assigned(nc, 1001), timeout=15, what="session assigned")
            assert (session.operator_id, session.client_name, session.chat_id) == ("anna", "Ivan Petrov", "1001")
            assert await cb.post(first, retry=1) == (200, "ok")  # VK resends: no answer reached it

            result = await call(
                nc, "reply", Reply(operator_id="anna", session_id=session.id, text="Yes, it ships today", client_msg_id="r1")
            )
            rid = random_id(result.message_id, 0)
            sent = await wait_for(lambda: [s for s in vk.sent_to(1001) if s.random_id == rid], what="reply at VK")
            assert [s.message for s in sent] == ["Yes, it ships today"]

        # A new gateway process gets the same event once more (VK retries after minutes).
        async with running_gateway(nats_server.url, vk.url) as gw:
            cb = sender(http, gw)
            assert await cb.post(first, retry=2) == (200, "ok")
            assert await cb.post(cb.message_new("Thanks!", from_id=1001, event_id="ev-b")) == (200, "ok")

            async def transcript_has_thanks() -> list[str] | None:
                texts = [h.text for h in await history(nc, session.id) if h.direction == "in"]
                return texts if "Thanks!" in texts else None

            assert await wait_for(transcript_has_thanks, timeout=15, what="second message") == [
                "Hello, is my order ready?",
                "Thanks!",
            ]
        # the reply reached VK exactly once
        assert len([s for s in vk.sent if s.random_id == rid]) == 1
        assert len([c for c in vk.calls_of("messages.send") if c.params["random_id"] == str(rid)]) == 1
