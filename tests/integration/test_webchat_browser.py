"""The widget in a real browser: headless Chromium on /demo, the gateway in-process, a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for
from servers import creds

from gateway_webchat import Settings, setup
from gateway_webchat.service import WEBCHAT
from openlines import bus, runner, subjects
from openlines.envelopes import MSG_ID_HEADER, Inbound, Outbound, decoder, encode

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


@pytest.fixture
async def svc(nats_server: Any) -> AsyncIterator[runner.Service[Settings]]:
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
    assert await page.evaluate("window.openlinesWidget.token") == token
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
