"""A WhatsApp chat in the operator workspace, in headless Chromium: the real router, WhatsApp gateway and
desk over a real nats-server, WhatsApp played by the local Cloud API peer.

The client last wrote 25 hours ago: the page says the window is closed, keeps the reply box shut and
offers the number's templates; the operator fills in the variables (the preview shows what the client
will read) and sends it; the template gets its delivered mark. The client answers, the window opens,
a free reply goes out; one WhatsApp refuses shows "Not delivered" with the reason.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from peers.whatsapp_api import contact, message, notification, text
from support import apply_lines, running_router
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, sign_in_live
from support.timing import wait_for
from support.whatsapp import CLIENT, FOLLOW_UP, SHOP, fake_whatsapp, running_gateway, whatsapp_line

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

PHONE = SHOP["phone_number_id"]
# A 1x1 PNG: the client's photo, previewed in the desk.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b2f1"
    "a30000000049454e44ae426082"
)
LINES = whatsapp_line(templates=FOLLOW_UP, extra="wait_seconds = 600").replace(
    '[operators.anna]\nname = "Anna"\n',
    '[operators.anna]\nname = "Anna Petrova"\npassword_hash = '
    '"$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"\n',
)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def test_closed_window_template_then_free_text_marks_and_a_refused_reply(nc: Any, nats_server: Any, browser: Any) -> None:
    await apply_lines(nc, LINES)
    errors: list[str] = []
    async with (
        running_router(nats_server.url),
        fake_whatsapp() as peer,
        running_gateway(nats_server.url, peer),
        running_desk(nats_server.url) as desk,
    ):
        peer.approve_template("follow_up", "en_US", params=2)
        anna = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(anna, "anna")
        await go_online(anna)

        old = int(time.time()) - 25 * 3600
        late = notification(PHONE, [text(CLIENT, "Any news on my order?", ts=old)], contacts=[contact(CLIENT, "Ann Lee")])
        assert (await peer.deliver(late))[0] == 200
        peer.age_window(PHONE, CLIENT, hours=25)

        item = anna.get_by_test_id("chat-item").filter(has_text="Ann Lee")
        await item.click()
        await anna.get_by_test_id("accept").click()
        banner = anna.get_by_test_id("window-banner")
        await expect(banner).to_have_attribute("data-open", "false")
        await expect(banner).to_contain_text("24-hour WhatsApp window is closed")
        await expect(anna.get_by_test_id("reply-input")).to_be_disabled()
        await expect(anna.get_by_test_id("attach-input")).to_be_disabled()

        # The template: its variables filled in, the preview is what the client will read.
        await anna.get_by_test_id("templates").select_option(label="Follow-up on an order (en_US)")
        fields = anna.get_by_test_id("template-variable")
        await expect(fields).to_have_count(2)
        await expect(fields.nth(0)).to_have_value("Ann Lee")  # the client's name, where a variable asks for a name
        await fields.nth(1).fill("A-17")
        expected = "Hello Ann Lee, we have news about your order A-17. Reply to continue."
        await expect(anna.get_by_test_id("template-preview")).to_have_text(expected)
        await anna.get_by_test_id("template-send").click()
        await expect(anna.get_by_test_id("template-panel")).to_be_hidden()
        sent = anna.get_by_test_id("transcript-entry").filter(has_text=expected)
        await expect(sent).to_have_attribute("data-direction", "out")
        await expect(sent.get_by_test_id("entry-mark")).to_have_attribute("data-status", "delivered")
        (at_whatsapp,) = peer.sent_to(CLIENT)
        assert at_whatsapp.type == "template"
        assert [p["text"] for p in at_whatsapp.payload["template"]["components"][0]["parameters"]] == ["Ann Lee", "A-17"]

        # The client answers with a photo: the window opens for 24 hours, the photo is shown, free text goes out.
        photo = peer.add_client_media(PHONE, PNG, "image/png")
        with_photo = message(CLIENT, "image", image={"id": photo, "mime_type": "image/png", "caption": "my receipt"})
        assert (await peer.client_says(PHONE, CLIENT, with_photo))[0] == 200
        shown = anna.get_by_test_id("transcript-entry").filter(has_text="my receipt").get_by_test_id("attachment-image")
        await expect(shown).to_be_visible()
        await anna.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=attachment-image]')]"
            ".some((i) => i.complete && i.naturalWidth === 1)"
        )
        assert (await peer.client_says(PHONE, CLIENT, text(CLIENT, "Thank you!")))[0] == 200
        await expect(anna.get_by_test_id("transcript")).to_contain_text("Thank you!")
        await expect(banner).to_have_attribute("data-open", "true")
        await expect(banner).to_contain_text("free replies until")
        await anna.get_by_test_id("reply-input").fill("You are welcome, Ann!")
        await anna.get_by_test_id("reply-send").click()
        free = anna.get_by_test_id("transcript-entry").filter(has_text="You are welcome, Ann!")
        await expect(free.get_by_test_id("entry-mark")).to_have_attribute("data-status", "delivered")
        await peer.read(peer.sent_to(CLIENT)[-1])
        await expect(free.get_by_test_id("entry-mark")).to_have_attribute("data-status", "read")

        # WhatsApp refuses a reply: the operator reads why, on the message.
        peer.fail(CLIENT, 131026, times=-1)
        await anna.get_by_test_id("reply-input").fill("Are you still there?")
        await anna.get_by_test_id("reply-send").click()
        refused = anna.get_by_test_id("transcript-entry").filter(has_text="Are you still there?")
        await expect(refused.get_by_test_id("entry-mark")).to_have_attribute("data-status", "failed")
        await expect(refused.get_by_test_id("entry-failed")).to_contain_text("Not delivered")
        await expect(refused.get_by_test_id("entry-failed")).to_contain_text("131026")

        # After a reload, the marks come back from the store.
        await anna.reload()
        await expect(anna.get_by_test_id("connection")).to_have_attribute("data-state", "live")
        await anna.get_by_test_id("chat-item").filter(has_text="Ann Lee").click()
        entry = anna.get_by_test_id("transcript-entry").filter(has_text="Are you still there?")
        await expect(entry.get_by_test_id("entry-failed")).to_contain_text("131026")
        await expect(
            anna.get_by_test_id("transcript-entry").filter(has_text=expected).get_by_test_id("entry-mark")
        ).to_have_attribute("data-status", "delivered")
        await wait_for(lambda: not errors, timeout=1, what="no JavaScript errors")
    assert errors == []
