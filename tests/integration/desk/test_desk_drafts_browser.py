"""Each chat keeps its own unsent reply, in headless Chromium against the real desk and router:
text typed for one client stays with that chat and never goes to another (a reply to the wrong
client was possible while one box served every chat)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from support import apply_lines, client_writes, outbound_for, running_router
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, sign_in_live
from support.timing import wait_for

from desk.settings import Settings
from openlines import bus, subjects
from openlines.apply import apply, live
from openlines.commands import SetStatus, call
from openlines.runner import Service
from openlines.state import Session

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml
    async with running_router(nats_server.url), running_desk(nats_server.url, "drafts-browser-secret-01-Kq7Zt9Wm3xRv") as svc:
        yield svc


async def test_a_reply_typed_for_one_chat_stays_with_it_and_never_goes_to_another(nc: Any, desk: Service[Settings]) -> None:
    errors: list[str] = []
    async with chromium() as browser:
        boris = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(boris, "boris")
        await go_online(boris)
        await client_writes(nc, "v-alice", "d-a1", "Where is my parcel?", name="Alice")
        await client_writes(nc, "v-bob", "d-b1", "I want a refund.", name="Bob")
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


async def test_a_chat_passed_on_unanswered_shows_how_long_the_client_has_waited_not_since_the_last_offer(
    nc: Any, desk: Service[Settings]
) -> None:
    b = await bus.Buckets(nc.jetstream()).open()
    cfg = await live(b)
    cfg.lines[0].queue.wait_seconds = 2  # anna lets the offer pass quickly
    await apply(b, cfg)
    js = nc.jetstream()
    async with chromium() as browser:
        boris = await new_page(browser, desk_url(desk))
        await boris.clock.install()
        await sign_in_live(boris, "boris")
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))  # online, but never answers
        await client_writes(nc, "v-wait", "w-1", "Hello?", name="Wanda")

        async def offered_to_boris() -> Session | None:
            for _key, (_rev, data) in (await bus.kv_entries(js, subjects.KV_SESSIONS)).items():
                try:
                    s = msgspec.json.decode(data, type=Session)
                except msgspec.ValidationError:
                    continue  # not a session record
                if s.client_name == "Wanda" and s.operator_id == "boris" and s.status == "assigned":
                    return s
            return None

        await go_online(boris)
        session = await wait_for(offered_to_boris, what="the offer passed on to boris")
        assert session.assigned_at is not None and session.assigned_at > session.opened_at
        item = boris.get_by_test_id("chat-item").filter(has_text="Wanda")
        await expect(item).to_be_visible()
        # Seconds under a minute, as the supervisor view counts them (not "just now").
        opened_age = (datetime.now(UTC) - session.opened_at).total_seconds()
        await boris.clock.fast_forward(int((30 - opened_age) * 1000))
        await expect(item.locator(".age")).to_have_text(re.compile(r"^waiting (2\d|3\d) s$"), timeout=20_000)
        # A minute after the chat opened, but less than that since it reached boris.
        await boris.clock.fast_forward(31_500)
        await boris.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")
        await expect(item.locator(".age")).to_have_text("waiting 1 min", timeout=20_000)


async def test_attach_file_is_reached_with_the_keyboard_and_an_old_upload_error_goes_when_the_next_file_is_attached(
    nc: Any, desk: Service[Settings]
) -> None:
    async with chromium() as browser:
        boris = await new_page(browser, desk_url(desk))
        await sign_in_live(boris, "boris")
        await go_online(boris)
        await client_writes(nc, "v-files", "f-1", "Can I send you the invoice?", name="Fiona")
        await boris.get_by_test_id("chat-item").filter(has_text="Fiona").click()
        await boris.get_by_test_id("accept").click()
        await expect(boris.get_by_test_id("reply-input")).to_be_focused()  # accepted: the box is ready
        # Keyboard only: back from the reply box to "Attach file", and Enter opens the file picker.
        await boris.get_by_test_id("reply-input").focus()
        for _ in range(6):
            if await boris.evaluate("document.activeElement && document.activeElement.dataset.testid") == "attach":
                break
            await boris.keyboard.press("Shift+Tab")
        assert await boris.evaluate("document.activeElement.dataset.testid") == "attach"
        # Enter on it opens the file picker (its hidden input is clicked; the picker itself is not needed here).
        await boris.evaluate(
            "() => document.getElementById('attach-input').addEventListener('click',"
            " (e) => { window.attachPicked = true; e.preventDefault(); }, { once: true })"
        )
        await boris.keyboard.press("Enter")
        await boris.wait_for_function("() => window.attachPicked === true")
        await boris.get_by_test_id("attach-input").set_input_files(
            {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""}  # refused: empty
        )
        await expect(boris.get_by_test_id("error")).to_contain_text("empty.txt was not attached")
        await boris.get_by_test_id("attach-input").set_input_files(
            {"name": "invoice.txt", "mimeType": "text/plain", "buffer": b"Invoice 42: 10 EUR"}
        )
        await expect(boris.get_by_test_id("attachment-chip")).to_contain_text("invoice.txt")
        await expect(boris.get_by_test_id("error")).to_be_hidden()
        # Pinned shows: the button looks pressed and the chat is marked in the list.
        await boris.get_by_test_id("pin").click()
        await expect(boris.get_by_test_id("pin")).to_have_attribute("aria-pressed", "true")
        await expect(boris.get_by_test_id("chat-item").filter(has_text="Fiona")).to_have_class(re.compile(r"\bpinned\b"))


async def test_on_a_phone_the_workspace_fits_the_screen_and_the_status_switch_is_on_it(nc: Any, desk: Service[Settings]) -> None:
    async with chromium() as browser:
        boris = await new_page(browser, desk_url(desk), width=390, height=844)
        await sign_in_live(boris, "boris")
        await client_writes(nc, "v-phone", "p-1", "Hello from a phone", name="Pat")
        await boris.get_by_test_id("chat-item").filter(has_text="Pat").click()
        await expect(boris.get_by_test_id("accept")).to_be_visible()
        width = await boris.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide on a 390 px screen"
        for testid in ("status-online", "status-away", "status-offline", "accept", "reply-input", "reply-send", "card-toggle"):
            box = await boris.get_by_test_id(testid).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 0.5, (testid, box)
        # The client card has no room beside the chat: "Client" opens it over the transcript, Escape closes it.
        card = boris.get_by_test_id("client-card")
        await expect(card).to_be_hidden()
        await boris.get_by_test_id("card-toggle").click()
        await expect(card).to_be_visible()
        await expect(boris.get_by_test_id("card-name")).to_have_text("Pat")
        await expect(boris.get_by_test_id("card-toggle")).to_have_attribute("aria-expanded", "true")
        box = await card.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390 + 0.5, box
        await boris.keyboard.press("Escape")
        await expect(card).to_be_hidden()
        await expect(boris.get_by_test_id("card-toggle")).to_be_focused()
