"""Each chat keeps its own unsent reply, in headless Chromium against the real desk and router:
text typed for one client stays with that chat and never goes to another (a reply to the wrong
client was possible while one box served every chat)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import wait_for
from desk_support import BROWSER_MARKS, chromium, client_writes, desk_url, go_online, new_page, running_desk, sign_in_live
from support import apply_lines, outbound_for, running_router

from desk.settings import Settings
from openlines.runner import Service

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml
    async with running_router(nats_server.url), running_desk(nats_server.url, "drafts-browser-secret-01-Kq7Zt9Wm3xRv") as svc:
        yield svc


async def test_a_reply_typed_for_one_chat_stays_with_it_and_never_goes_to_another(nc: Any, desk: Service[Settings]) -> None:
    js = nc.jetstream()
    errors: list[str] = []
    async with chromium() as browser:
        boris = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(boris, "boris")
        await go_online(boris)
        await client_writes(js, "d-a1", "Where is my parcel?", "v-alice", name="Alice")
        await client_writes(js, "d-b1", "I want a refund.", "v-bob", name="Bob")
        alice = boris.get_by_test_id("chat-item").filter(has_text="Alice")
        bob = boris.get_by_test_id("chat-item").filter(has_text="Bob")
        box = boris.get_by_test_id("reply-input")
        for item in (alice, bob):
            await item.click()
            await boris.get_by_test_id("accept").click()
            await expect(box).to_be_enabled()

        await alice.click()
        await box.fill("Alice, your parcel left the warehouse today")  # not sent yet
        await bob.click()
        await expect(box).to_have_value("")  # Bob's chat has its own, empty box
        await box.fill("Bob, the refund is on its way.")
        await box.press("Enter")
        await expect(box).to_have_value("")

        async def bob_answered() -> bool:
            return any(o.text == "Bob, the refund is on its way." for o in await outbound_for(nc, "v-bob"))

        await wait_for(bob_answered, what="Bob's reply at his widget")
        await alice.click()
        await expect(box).to_have_value("Alice, your parcel left the warehouse today")
        # A reload keeps the half-written answer with its chat.
        await boris.reload()
        await expect(boris.get_by_test_id("connection")).to_have_attribute("data-state", "live")
        await boris.get_by_test_id("chat-item").filter(has_text="Alice").click()
        await expect(box).to_have_value("Alice, your parcel left the warehouse today")
        await boris.get_by_test_id("chat-item").filter(has_text="Bob").click()
        await expect(box).to_have_value("")
    sent_to_alice = [o.text for o in await outbound_for(nc, "v-alice") if o.operator_id == "boris"]
    assert sent_to_alice == [], sent_to_alice  # nothing of Bob's (or her own draft) went to Alice
    assert errors == []
