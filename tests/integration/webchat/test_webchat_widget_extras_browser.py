"""The widget's extras in Chromium through the real gateway and router: who answers in the header,
rating as buttons with a thank-you, emoji, the chime and badge for a reply the visitor is not looking at."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from support import apply_lines, events, session_of
from support.desk import new_page, running_desk, sign_in_live
from support.desk_admin import DEMO_HASH
from support.servers import creds
from support.timing import wait_for
from support.webchat import customer_site, widget_in_chromium

from gateway_webchat import Settings, setup
from openlines import bus, runner, subjects
from openlines.commands import Close, Reply, SetStatus, call
from openlines.state import ClientRecord, Session, client_key

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"chromium is not installed at {CHROMIUM}"),
]

LINES = """
[operators.anna]
name = "Anna Petrova"
password_hash = "DEMO_HASH"

[operators.boris]
name = "Boris Ivanov"
password_hash = "DEMO_HASH"

[[lines]]
id = "site"
name = "Website"
channels = [{ channel = "webchat", account = "demo" }]
[lines.queue]
operators = ["anna", "boris"]
[lines.auto_replies]
closing = "Thank you, the conversation is closed."
rating_request = "How did we do? Reply with 1 (bad) to 5 (excellent)."
[lines.session]
rating = true
""".replace("DEMO_HASH", DEMO_HASH)


@pytest.fixture
async def widget(nats_server: Any, nc: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The router and the gateway running, the demo page open in Chromium, Anna online: (page, gateway)."""
    await apply_lines(nc, LINES)
    async with widget_in_chromium(nats_server.url) as (page, gateway):
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        yield page, gateway


async def visitor_session(nc: Any, page: Any) -> Session | None:
    """The visitor's open session once it is Anna's."""
    visitor = await page.evaluate("window.openlinesWidget.visitor")
    s = await session_of(nc, visitor, line="site")
    return s if s is not None and s.operator_id == "anna" else None  # offered to Anna: she may answer


async def test_the_header_names_who_answers_and_a_closed_panel_gets_a_badge_and_a_chime(widget: Any, nc: Any) -> None:
    from playwright.async_api import expect

    page, _ = widget
    w = page.get_by_test_id("ol-widget")
    await page.evaluate("window.openlinesWidget.open(); window.openlinesWidget.send('Is my order on its way?')")
    session = await wait_for(lambda: visitor_session(nc, page), what="the visitor's session")
    assert await w.get_by_test_id("ol-agent").is_hidden()  # nobody has answered yet
    await page.evaluate("window.openlinesWidget.close()")
    await call(nc, "reply", Reply(operator_id="anna", session_id=session.id, text="Yes, it left today.", client_msg_id="r1"))
    await expect(w.get_by_test_id("ol-badge")).to_have_text("1")
    assert await page.evaluate("window.openlinesWidget.chimes") == 1
    await page.evaluate("window.openlinesWidget.open()")
    await expect(w.get_by_test_id("ol-agent")).to_contain_text("Anna Petrova")
    await expect(w.get_by_test_id("ol-avatar")).to_have_text("AP")
    await expect(w.get_by_test_id("ol-badge")).to_be_hidden()
    # Kept across a reload, like the conversation.
    await page.reload()
    await expect(w.get_by_test_id("ol-avatar")).to_have_text("AP")


async def test_the_rating_request_offers_five_buttons_and_a_click_rates_the_session_once(widget: Any, nc: Any) -> None:
    from playwright.async_api import expect

    page, _ = widget
    w = page.get_by_test_id("ol-widget")
    await page.evaluate("window.openlinesWidget.open(); window.openlinesWidget.send('Thanks for the help')")
    session = await wait_for(lambda: visitor_session(nc, page), what="the visitor's session")
    await call(nc, "reply", Reply(operator_id="anna", session_id=session.id, text="You are welcome!", client_msg_id="r1"))
    await call(nc, "close", Close(operator_id="anna", session_id=session.id))
    rating = w.get_by_test_id("ol-rating")
    await expect(rating).to_be_visible()
    assert await rating.get_attribute("aria-label") == "Rate this chat from 1 (bad) to 5 (excellent)"
    await expect(rating.get_by_role("button")).to_have_count(5)
    # Every action by keyboard: Tab reaches the buttons, Enter rates.
    await rating.get_by_test_id("ol-rate-4").focus()
    await page.keyboard.press("Enter")
    await expect(w.get_by_test_id("ol-rating-thanks")).to_have_text("Thank you for your rating (4 of 5)!")
    await expect(rating).to_have_count(0)

    async def rated() -> list[Any]:
        return [e for e in await events(nc, "session_rated") if e.session_id == session.id]

    [event] = await wait_for(rated, what="the session rated")
    assert event.reason == "4"
    b = await bus.Buckets(nc.jetstream()).open()
    stored, _ = await bus.kv_get(b.sessions, session.id, Session)
    assert stored is not None and stored.rating == 4
    # The thank-you stays after a reload; no buttons come back.
    await page.reload()
    await expect(w.get_by_test_id("ol-rating-thanks")).to_be_visible()
    await expect(w.get_by_test_id("ol-rating")).to_have_count(0)


async def test_emoji_go_in_where_the_cursor_is_and_escape_closes_the_picker(widget: Any) -> None:
    from playwright.async_api import expect

    page, _ = widget
    w = page.get_by_test_id("ol-widget")
    await page.evaluate("window.openlinesWidget.open()")
    box = w.get_by_test_id("ol-input")
    await box.fill("Thanks !")
    await box.evaluate("b => { b.selectionStart = b.selectionEnd = 6; }")
    await w.get_by_test_id("ol-emoji").click()
    picker = w.get_by_test_id("ol-emojis")
    await expect(picker).to_be_visible()
    assert await w.get_by_test_id("ol-emoji").get_attribute("aria-expanded") == "true"
    await picker.get_by_role("button", name="Insert \U0001f44d").click()
    await expect(box).to_have_value("Thanks\U0001f44d !")
    await expect(picker).to_be_hidden()
    await w.get_by_test_id("ol-emoji").click()
    await page.keyboard.press("Escape")
    await expect(picker).to_be_hidden()
    await expect(w.get_by_test_id("ol-panel")).to_be_visible()  # Escape closed the picker, not the chat


@pytest.fixture
async def shop_page(widget: Any) -> AsyncIterator[Any]:
    """A customer's site (its own origin) embedding the widget with a pre-chat form."""
    page, gateway = widget
    tag = (
        f'<script src="http://127.0.0.1:{gateway.port}/widget.js" data-account="demo" data-prechat="name email phone"'
        ' data-prechat-required="email" data-consent="I agree that Acme uses my data to answer me."'
        ' data-consent-url="https://shop.example.test/privacy"></script>'
    )
    async with customer_site(tag) as url:
        await page.goto(url)
        await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        yield page


async def test_the_pre_chat_form_asks_first_checks_and_its_contact_reaches_the_client_record(shop_page: Any, nc: Any) -> None:
    from playwright.async_api import expect

    page = shop_page
    w = page.get_by_test_id("ol-widget")
    await w.get_by_test_id("ol-launcher").click()
    form = w.get_by_test_id("ol-prechat")
    await expect(form).to_be_visible()
    await expect(w.get_by_test_id("ol-input")).to_be_hidden()  # no chat before the form
    await expect(w.get_by_test_id("ol-prechat-name")).to_be_focused()
    await expect(form.get_by_role("link", name="Privacy policy")).to_have_attribute("href", "https://shop.example.test/privacy")
    # Required e-mail missing, then a phone without its country code, then no consent: each said, nothing sent.
    await w.get_by_test_id("ol-prechat-name").fill("Ann Client")
    await w.get_by_test_id("ol-prechat-start").click()
    await expect(w.get_by_test_id("ol-prechat-error")).to_have_text("E-mail is required.")
    await expect(w.get_by_test_id("ol-prechat-email")).to_be_focused()
    await w.get_by_test_id("ol-prechat-email").fill("ann@client.example.com")
    await w.get_by_test_id("ol-prechat-phone").fill("020 7946 0018")
    await w.get_by_test_id("ol-prechat-start").click()
    await expect(w.get_by_test_id("ol-prechat-error")).to_contain_text("country code")
    await w.get_by_test_id("ol-prechat-phone").fill("+44 20 7946 0018")
    await page.keyboard.press("Enter")  # submits the form from the keyboard
    await expect(w.get_by_test_id("ol-prechat-error")).to_have_text("Please agree to continue.")
    await w.get_by_test_id("ol-prechat-consent").check()
    await w.get_by_test_id("ol-prechat-start").click()
    await expect(form).to_be_hidden()
    await expect(w.get_by_test_id("ol-input")).to_be_focused()
    await expect(w.get_by_test_id("ol-name")).to_have_value("Ann Client")
    assert await page.evaluate("window.openlinesWidget.contact") == {
        "email": "ann@client.example.com",
        "phone": "+44 20 7946 0018",
        "consent": "I agree that Acme uses my data to answer me. (https://shop.example.test/privacy)",
    }
    await w.get_by_test_id("ol-input").fill("Where is my order?")
    await page.keyboard.press("Enter")
    await expect(w.get_by_test_id("ol-msg-out").get_by_test_id("ol-status")).to_have_text("sent")

    visitor = await page.evaluate("window.openlinesWidget.visitor")
    b = await bus.Buckets(nc.jetstream()).open()
    key = client_key("webchat", "demo", subjects.chat_key("webchat", "demo", visitor))

    async def profile() -> Any:
        rec, _ = await bus.kv_get(b.clients, key, ClientRecord)
        return rec.profile if rec is not None and rec.profile.email else None

    got = await wait_for(profile, what="the contact in the client record")
    assert (got.name, got.email, got.phone) == ("Ann Client", "ann@client.example.com", "+442079460018")
    assert got.consent == "I agree that Acme uses my data to answer me. (https://shop.example.test/privacy)"
    # Asked once: a reload opens the chat, not the form.
    await page.reload()
    await page.evaluate("window.openlinesWidget.open()")
    await expect(w.get_by_test_id("ol-prechat")).to_be_hidden()
    await expect(w.get_by_test_id("ol-input")).to_be_visible()


FIREFOX_DE = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def test_the_operator_sees_the_page_the_visitor_came_from_their_browser_and_language(
    widget: Any, nc: Any, nats_server: Any
) -> None:
    """A German Firefox visitor arrives from a search page by a link with a tracking query, and writes."""
    from aiohttp import web
    from playwright.async_api import expect

    page, gateway = widget
    tag = f'<script src="http://127.0.0.1:{gateway.port}/widget.js" data-account="demo"></script>'

    async def search(_: web.Request) -> web.Response:
        return web.Response(
            text='<a id="go" href="/shoes/red?utm_source=ads&token=s3cret#size">Red shoes</a>', content_type="text/html"
        )

    async def shoes(_: web.Request) -> web.Response:
        return web.Response(text=f"<!doctype html><h1>Red shoes</h1>{tag}", content_type="text/html")

    app = web.Application()
    app.router.add_get("/search", search)
    app.router.add_get("/shoes/red", shoes)
    site = web.AppRunner(app)
    await site.setup()
    await web.TCPSite(site, "127.0.0.1", 0).start()
    shop = f"http://127.0.0.1:{site.addresses[0][1]}"
    try:
        context = await page.context.browser.new_context(user_agent=FIREFOX_DE, locale="de-DE")
        visitor = await context.new_page()
        await visitor.goto(f"{shop}/search?q=red+shoes")
        await visitor.click("#go")
        await visitor.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        await visitor.evaluate("window.openlinesWidget.send('Do you have them in 38?')")
        session = await wait_for(lambda: visitor_session(nc, visitor), what="the visitor's session")

        async with running_desk(nats_server.url) as desk:
            op = await new_page(page.context.browser, f"http://127.0.0.1:{desk.port}")
            await sign_in_live(op, "anna")
            await op.get_by_test_id("chat-item").first.click()  # her only chat
            card = op.get_by_test_id("client-card")
            # No query string or fragment: they can carry tokens (a reset link) or personal data.
            await expect(card.get_by_test_id("card-page")).to_have_text(f"{shop}/shoes/red")
            await expect(card.get_by_test_id("card-page").get_by_role("link")).to_have_attribute("href", f"{shop}/shoes/red")
            await expect(card.get_by_test_id("card-referrer")).to_have_text(f"{shop}/search")
            await expect(card.get_by_test_id("card-browser")).to_have_text("Firefox 133 on Windows")
            await expect(card.get_by_test_id("card-language")).to_have_text("de-DE")
            await expect(card.get_by_test_id("card-consent")).to_be_hidden()  # nothing asked, nothing shown
            assert session.channel == "webchat"
            await context.close()
    finally:
        await site.cleanup()


async def test_outside_business_hours_the_widget_says_closed_with_the_lines_own_words(nats_server: Any, nc: Any) -> None:
    """Not "Away" (someone may come back any minute) but "Closed", and when the line opens: its outside_hours text."""
    from datetime import UTC, datetime, timedelta

    from playwright.async_api import async_playwright, expect

    other_day = (datetime.now(UTC) + timedelta(days=2)).strftime("%a").lower()  # open only then: closed now
    closed_lines = LINES.replace(
        "[lines.session]",
        f'outside_hours = "We are closed now and answer from 9:00 on weekdays."\n'
        f'[lines.hours]\nenabled = true\ntimezone = "UTC"\n[lines.hours.weekly]\n{other_day} = ["09:00-18:00"]\n[lines.session]',
    )
    await apply_lines(nc, closed_lines)
    settings = Settings(
        nats_url=nats_server.url,
        http_port=0,
        webchat_secret="extras-secret-0123456789-Kq7Zt9Wm3xRv",
        shutdown_timeout=3.0,
        **creds("gateway-webchat"),
    )
    gateway = await runner.launch("gateway-webchat", settings, setup, first_attempts=5)
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{gateway.port}/demo")
            await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
            await page.evaluate("window.openlinesWidget.open()")
            w = page.get_by_test_id("ol-widget")
            await expect(w.get_by_test_id("ol-conn")).to_have_text("Closed")
            await expect(page.locator("#ol-greet")).to_have_text("We are closed now and answer from 9:00 on weekdays.")
            await expect(w).to_have_attribute("data-closed", "true")
            await browser.close()
    finally:
        await gateway.stop()


async def test_typing_shows_both_ways_between_the_widget_and_the_desk(widget: Any, nc: Any, nats_server: Any) -> None:
    from playwright.async_api import expect

    page, _ = widget
    w = page.get_by_test_id("ol-widget")
    await page.evaluate("window.openlinesWidget.setName('Maria'); window.openlinesWidget.open()")
    await page.evaluate("window.openlinesWidget.send('Hello, a question about sizes')")
    session = await wait_for(lambda: visitor_session(nc, page), what="the visitor's session")
    said: list[Any] = []

    async def heard(m: Any) -> None:
        said.append(m)

    sub = await nc.subscribe("ol.typing.out.>", cb=heard)  # what the desk tells the gateways
    await bus.flush_all(nc)  # the server has the subscription before anything is said
    async with running_desk(nats_server.url) as desk:
        op = await new_page(page.context.browser, f"http://127.0.0.1:{desk.port}")
        await sign_in_live(op, "anna")
        await op.get_by_test_id("chat-item").first.click()
        typing_line = op.get_by_test_id("client-typing")
        await expect(typing_line).to_be_hidden()
        # The visitor types: the operator sees it, and it goes once the message arrives.
        await w.get_by_test_id("ol-input").press_sequentially("Do you have 38", delay=20)
        await expect(typing_line).to_have_text("Maria is typing…")
        await w.get_by_test_id("ol-input").press("Enter")
        await expect(typing_line).to_be_hidden()
        # The operator types: the visitor sees who.
        await op.get_by_test_id("reply-input").press_sequentially("Let me check", delay=20)
        await expect(w.get_by_test_id("ol-typing")).to_have_text("Anna Petrova is typing…")
        await wait_for(lambda: said, what="the operator's typing on NATS")
        assert session.id not in said[0].data.decode() and said[0].subject.startswith("ol.typing.out.webchat.demo.")
        # Typed at most every few seconds, not per key.
        assert len(said) <= 2
        # Only the operator answering the chat is shown typing to its client.
        from desk.http import DESK
        from desk.live import Connection

        hub = desk.app[DESK].hub
        boris = Connection(None, "boris")  # type: ignore[arg-type]  (typing writes to no socket)
        boris.shown.add(session.id)
        assert await hub.typing(boris, session.id, "Boris") is False
        anna = Connection(None, "anna")  # type: ignore[arg-type]
        assert await hub.typing(anna, session.id, "Anna") is False  # not a chat her page lists
        anna.shown.add(session.id)
        assert await hub.typing(anna, session.id, "Anna") is True
        assert await hub.typing(anna, session.id, "Anna") is False  # at most every 2 s
    await sub.unsubscribe()


async def test_the_operator_sees_when_the_visitor_has_read_a_reply_and_a_visitor_cannot_mark_anothers(
    widget: Any, nc: Any, nats_server: Any
) -> None:
    from playwright.async_api import expect
    from support import marks_of

    page, gateway = widget
    await page.evaluate("window.openlinesWidget.close(); window.openlinesWidget.send('Is the blue one in stock?')")
    session = await wait_for(lambda: visitor_session(nc, page), what="the visitor's session")
    async with running_desk(nats_server.url) as desk:
        op = await new_page(page.context.browser, f"http://127.0.0.1:{desk.port}")
        await sign_in_live(op, "anna")
        await op.get_by_test_id("chat-item").first.click()
        await op.get_by_test_id("reply-input").fill("Yes, two left.")
        await op.get_by_test_id("reply-input").press("Enter")
        # The widget is closed: the reply waits unread (a badge), no read mark.
        await expect(page.get_by_test_id("ol-widget").get_by_test_id("ol-badge")).to_have_text("1")
        assert [m for m in await marks_of(nc, session.id) if m.status == "read"] == []
        # Another visitor names Anna's reply as read: it is not theirs, nothing is marked.
        replies = [m for m in await page.evaluate("window.openlinesWidget.transcript") if m["kind"] == "in" and not m["auto"]]
        [reply] = replies
        import aiohttp
        from support.webchat import connect, recv

        async with aiohttp.ClientSession() as http:
            other, welcome = await connect(http, f"http://127.0.0.1:{gateway.port}")
            assert welcome["type"] == "welcome"
            await other.send_json({"type": "read", "ids": [reply["id"]]})
            # A socket's frames are handled in order: once its next message is acked, the read was handled.
            await other.send_json({"type": "message", "id": "after-read", "text": "hello"})
            while (await recv(other)).get("type") != "ack":
                pass
            await other.close()
        assert [m for m in await marks_of(nc, session.id) if m.status == "read"] == []
        # The visitor opens the chat: read, and the operator sees it under her message.
        await page.evaluate("window.openlinesWidget.open()")

        async def read() -> list[Any]:
            return [m for m in await marks_of(nc, session.id) if m.status == "read"]

        [mark] = await wait_for(read, what="the read mark")
        assert (mark.message_id, mark.channel) == (reply["id"], "webchat")
        mine = op.get_by_test_id("transcript-entry").filter(has_text="Yes, two left.").get_by_test_id("entry-mark")
        await expect(mine).to_have_attribute("data-status", "read")


async def test_the_visitor_sees_read_once_the_operator_answering_has_the_messages_on_screen(
    widget: Any, nc: Any, nats_server: Any
) -> None:
    from playwright.async_api import expect

    page, _ = widget
    w = page.get_by_test_id("ol-widget")
    await page.evaluate("window.openlinesWidget.open(); window.openlinesWidget.send('Is the blue one in stock?')")
    await page.evaluate("window.openlinesWidget.send('Size 38, please')")
    statuses = w.get_by_test_id("ol-status")
    await expect(statuses).to_have_text(["sent", "sent"])
    session = await wait_for(lambda: visitor_session(nc, page), what="the visitor's session")
    said: list[Any] = []

    async def heard(m: Any) -> None:
        said.append(m)

    sub = await nc.subscribe("ol.seen.>", cb=heard)  # what the desk tells the gateways
    await bus.flush_all(nc)  # the server has the subscription before anything is said
    # A "seen" naming another visitor's message marks nothing here: the gateway checks whose it is.
    from openlines.envelopes import Seen

    visitor = await page.evaluate("window.openlinesWidget.visitor")
    key = subjects.chat_key("webchat", "demo", visitor)
    forged = Seen(chat_id=visitor, upto="webchat:demo:someone-else:m1")
    await nc.publish(subjects.seen("webchat", "demo", key), msgspec.json.encode(forged))
    async with running_desk(nats_server.url) as desk:
        # A colleague looking at the chat (from a view) is not the answer being read.
        boris = await new_page(page.context.browser, f"http://127.0.0.1:{desk.port}")
        await sign_in_live(boris, "boris")
        await boris.get_by_test_id("view-lines").click()
        await boris.get_by_test_id("view-item").first.click()
        await expect(boris.get_by_test_id("transcript")).to_contain_text("Size 38, please")
        await expect(statuses).to_have_text(["sent", "sent"])
        # Anna, whose chat it is, opens it: both messages say "read" in the widget.
        anna = await new_page(page.context.browser, f"http://127.0.0.1:{desk.port}")
        await sign_in_live(anna, "anna")
        await anna.get_by_test_id("chat-item").first.click()
        await expect(statuses).to_have_text(["read", "read"])
        told = [m for m in said if b"someone-else" not in m.data]
        assert [m.subject.split(".")[:4] for m in told] == [["ol", "seen", "webchat", "demo"]]  # once, and only Anna's
        assert session.id not in told[0].data.decode()
        # A later message is "sent" until she has it on screen too; kept "read" after a reload.
        await page.evaluate("window.openlinesWidget.send('And in red?')")
        await expect(statuses).to_have_text(["read", "read", "read"])  # her chat is open: it is read at once
        await page.reload()
        await page.evaluate("window.openlinesWidget.open()")
        await expect(w.get_by_test_id("ol-status")).to_have_text(["read", "read", "read"])
        # The desk tells only what the chat's own operator has seen, and only of its own client's messages.
        from desk.http import DESK
        from desk.live import Connection

        hub = desk.app[DESK].hub
        other = Connection(None, "boris")  # type: ignore[arg-type]
        other.shown.add(session.id)
        assert await hub.seen(other, session.id, "webchat:demo:x:y") is False
    await sub.unsubscribe()
