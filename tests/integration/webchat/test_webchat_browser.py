"""The widget in a real browser: headless Chromium on /demo, the gateway in-process, a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.servers import creds
from support.timing import wait_for
from support.webchat import bind_widget_accounts, customer_site

from gateway_webchat import Settings, setup
from gateway_webchat.service import WEBCHAT
from openlines import bus, runner, subjects
from openlines.envelopes import MSG_ID_HEADER, Inbound, Outbound, decoder, encode

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


@pytest.fixture
async def svc(nats_server: Any, nc: Any) -> AsyncIterator[runner.Service[Settings]]:
    await bind_widget_accounts(nc)
    settings = Settings(
        nats_url=nats_server.url,
        http_port=0,
        webchat_secret="browser-secret-0123456789-Kq7Zt9Wm3xRv",
        shutdown_timeout=3.0,
        **creds("gateway-webchat"),
    )
    service = await runner.launch("gateway-webchat", settings, setup, first_attempts=5)
    yield service
    await service.stop()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1200, "height": 800})
        pg = await context.new_page()
        yield pg
        await context.close()
        await browser.close()


async def in_ol_in(js: Any, envelope_id: str) -> list[Inbound]:
    dec = decoder(Inbound)
    msgs = await bus.read_subject(js, subjects.STREAM_IN, subjects.inbound_account("webchat", "demo"))
    return [env for env in (dec.decode(data) for _, data in msgs) if env.id == envelope_id]


async def test_visitor_chats_from_the_demo_page_and_keeps_the_conversation_after_reload(svc: Any, nc: Any, page: Any) -> None:
    js = nc.jetstream()
    await wait_for(lambda: svc.app[WEBCHAT].consumer.ready() is None, what="outbound consumer")
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(f"http://127.0.0.1:{svc.port}/demo")
    await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    visitor = await page.evaluate("window.openlinesWidget.visitor")
    token = await page.evaluate("window.openlinesWidget.token")
    assert visitor and token

    await page.get_by_test_id("ol-launcher").click()
    await page.get_by_test_id("ol-name").fill("Ann")
    await page.get_by_test_id("ol-input").fill("Where is my rocket?")
    await page.get_by_test_id("ol-send").click()

    mine = page.get_by_test_id("ol-msg-out").filter(has_text="Where is my rocket?")
    await mine.and_(page.locator('[data-status="sent"]')).wait_for()
    assert await mine.get_by_test_id("ol-status").inner_text() == "sent"
    client_id = await mine.get_attribute("data-id")
    stored = await in_ol_in(js, f"webchat:demo:{visitor}:{client_id}")
    assert len(stored) == 1 and stored[0].text == "Where is my rocket?" and stored[0].profile.name == "Ann"

    out = Outbound(
        id="reply-1",
        session_id="s1",
        channel="webchat",
        account="demo",
        chat_id=visitor,
        text="It ships tomorrow!",
        operator_id="op1",
        operator_name="Olga",
        created_at=datetime.now(UTC),
    )
    chat = subjects.chat_key("webchat", "demo", visitor)
    await js.publish(subjects.outbound("webchat", "demo", chat), encode(out), headers={MSG_ID_HEADER: out.id})
    reply = page.get_by_test_id("ol-msg-in").filter(has_text="It ships tomorrow!")
    await reply.wait_for()
    assert "Olga" in await reply.inner_text()

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "webchat-widget.png"))

    await page.reload()
    await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    assert await page.evaluate("window.openlinesWidget.visitor") == visitor
    assert await page.evaluate("window.openlinesWidget.token")  # renewed on every connection, same visitor
    # The token travelled in the first frame, never in a URL (URLs end up in logs).
    assert len(sockets) == 2 and all(url.endswith("/ws/demo") for url in sockets), sockets
    # The panel was open before the reload and the transcript is still there, without doubles.
    await page.get_by_test_id("ol-msg-in").filter(has_text="It ships tomorrow!").wait_for()
    assert await page.get_by_test_id("ol-msg-in").count() == 1
    assert await page.get_by_test_id("ol-msg-out").count() == 1
    assert await page.get_by_test_id("ol-msg-out").get_attribute("data-status") == "sent"


async def test_a_message_sent_while_nats_is_down_shows_not_sent_and_retry_delivers_it_once(
    svc: Any, nats_server: Any, page: Any
) -> None:
    await page.goto(f"http://127.0.0.1:{svc.port}/demo")
    await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    visitor = await page.evaluate("window.openlinesWidget.visitor")
    await page.get_by_test_id("ol-launcher").click()
    nats_server.stop()
    await wait_for(lambda: not svc.nc.is_connected, what="gateway to notice NATS is gone")
    await page.get_by_test_id("ol-input").fill("hello?")
    await page.get_by_test_id("ol-input").press("Enter")
    mine = page.get_by_test_id("ol-msg-out").filter(has_text="hello?")
    await mine.and_(page.locator('[data-status="failed"]')).wait_for()
    assert await mine.get_by_test_id("ol-status").inner_text() == "not sent – retry"
    client_id = await mine.get_attribute("data-id")

    nats_server.start()
    await wait_for(lambda: svc.nc.is_connected, timeout=20, what="gateway to reconnect to NATS")

    async def retried() -> bool:
        if await mine.get_attribute("data-status") == "sent":
            return True
        if await mine.get_attribute("data-status") == "failed":
            await mine.get_by_test_id("ol-retry").click()
        return False

    await wait_for(retried, timeout=20, interval=0.3, what="retry to show sent")
    checker = await bus.connect(nats_server.url, "checker", first_attempts=5)
    try:
        assert len(await in_ol_in(checker.jetstream(), f"webchat:demo:{visitor}:{client_id}")) == 1
    finally:
        await checker.close()


async def test_on_a_phone_the_open_widget_fits_the_screen_and_an_image_reply_stays_in_view(svc: Any, nc: Any, page: Any) -> None:
    """390 px wide: the panel covers the screen without shifting, the text box and Send are on it;
    an operator's image, which takes its height only once loaded, leaves the newest message in view."""
    from desk.files import FileStore

    await page.set_viewport_size({"width": 390, "height": 844})
    js = nc.jetstream()
    await wait_for(lambda: svc.app[WEBCHAT].consumer.ready() is None, what="outbound consumer")
    await page.goto(f"http://127.0.0.1:{svc.port}/demo")
    await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    visitor = await page.evaluate("window.openlinesWidget.visitor")
    await page.get_by_test_id("ol-launcher").click()
    for testid in ("ol-panel", "ol-input", "ol-send"):
        box = await page.get_by_test_id(testid).bounding_box()
        assert box is not None, testid
        assert box["x"] >= 0 and box["y"] >= 0, (testid, box)
        assert box["x"] + box["width"] <= 390 + 0.5 and box["y"] + box["height"] <= 844 + 0.5, (testid, box)
    send = await page.get_by_test_id("ol-send").bounding_box()
    assert send is not None
    # Nothing lies over Send (the launcher steps aside while the chat is open).
    top = await page.evaluate(
        "([x, y]) => { const h = document.elementFromPoint(x, y); return h && h.shadowRoot"
        " ? h.shadowRoot.elementFromPoint(x, y)?.dataset.testid : h?.dataset?.testid; }",
        [send["x"] + send["width"] / 2, send["y"] + send["height"] / 2],
    )
    assert top == "ol-send", top

    chat = subjects.chat_key("webchat", "demo", visitor)
    for i in range(12):  # enough to scroll
        out = Outbound(
            id=f"fill-{i}", session_id="s1", channel="webchat", account="demo", chat_id=visitor,
            text=f"Line {i} of a long answer", operator_name="Olga", created_at=datetime.now(UTC),
        )  # fmt: skip
        await js.publish(subjects.outbound("webchat", "demo", chat), encode(out), headers={MSG_ID_HEADER: out.id})
    await page.get_by_test_id("ol-msg-in").filter(has_text="Line 11 of a long answer").wait_for()
    big = _png(200, 400)
    label = await (await FileStore.open(js)).put("s1", "photo.png", "image/png", big)
    out = Outbound(
        id="photo-1", session_id="s1", channel="webchat", account="demo", chat_id=visitor,
        text="Here is the photo", attachments=[label.attachment("https://desk.example.com")],
        operator_name="Olga", created_at=datetime.now(UTC),
    )  # fmt: skip
    await js.publish(subjects.outbound("webchat", "demo", chat), encode(out), headers={MSG_ID_HEADER: out.id})
    img = page.locator("img").last
    await img.wait_for()
    await page.wait_for_function(
        "() => { for (const h of document.querySelectorAll('*')) { const r = h.shadowRoot; if (!r) continue;"
        " const i = r.querySelector('.files img'); if (!i || !i.complete || !i.naturalHeight) return false;"
        " const log = r.getElementById('ol-log'); return log.scrollHeight - log.scrollTop - log.clientHeight < 2; }"
        " return false; }"
    )


def _png(width: int, height: int) -> bytes:
    """A plain grey PNG of this size (zlib-compressed rows), to take real height when shown."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


async def test_the_widget_says_away_and_what_to_expect_while_nobody_can_answer(svc: Any, page: Any) -> None:
    await page.goto(f"http://127.0.0.1:{svc.port}/demo")
    await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    await page.get_by_test_id("ol-launcher").click()
    conn = page.get_by_test_id("ol-conn")
    await conn.wait_for()
    assert await conn.inner_text() == "Away"  # no operator of the line is online
    assert "away right now" in await page.locator("#ol-greet").inner_text()


async def test_on_a_320_px_phone_a_themed_widget_fits_and_takes_the_sites_title_and_colour(svc: Any, page: Any) -> None:
    """A customer's site themes the widget through its script tag; on the narrowest phones every control is on screen."""
    tag = (
        f'<script src="http://127.0.0.1:{svc.port}/widget.js" data-account="demo" data-title="Acme Support"'
        ' data-color="#0f766e" data-away-greeting="Nobody is here now: leave a message."></script>'
    )
    async with customer_site(tag) as url:
        await page.set_viewport_size({"width": 320, "height": 568})
        await page.goto(url)
        await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        launcher = page.get_by_test_id("ol-launcher")
        assert await launcher.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(15, 118, 110)"
        await launcher.click()
        panel = page.get_by_test_id("ol-panel")
        await panel.get_by_text("Acme Support").wait_for()
        await panel.get_by_text("Nobody is here now: leave a message.").wait_for()  # no operator is online
        for testid in ("ol-panel", "ol-input", "ol-send", "ol-attach", "ol-emoji", "ol-close"):
            box = await page.get_by_test_id(testid).bounding_box()
            assert box is not None, testid
            assert box["x"] >= 0 and box["y"] >= 0, (testid, box)
            assert box["x"] + box["width"] <= 320 + 0.5 and box["y"] + box["height"] <= 568 + 0.5, (testid, box)
        send = page.get_by_test_id("ol-send")
        assert await send.evaluate("b => getComputedStyle(b).backgroundColor") == "rgb(15, 118, 110)"
        await page.get_by_role("textbox", name="Message").wait_for()  # the text box is named for screen readers
