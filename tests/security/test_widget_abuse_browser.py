"""The widget in headless Chromium meets the abuse limits: it shows the refusal and recovers by itself."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.timing import wait_for
from support.webchat import SECRET, bind_widget_accounts, metric, webchat_process

from gateway_webchat.token import VisitorToken, sign
from openlines import bus, subjects
from openlines.envelopes import Inbound, decoder

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        pg = await browser.new_page()
        yield pg
        await browser.close()


async def stored_texts(nc: Any) -> list[str]:
    dec = decoder(Inbound)
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("webchat", "demo"))
    return [dec.decode(data).text for _, data in rows]


async def test_a_rate_limited_widget_says_so_keeps_the_message_and_sends_it_after_retry_after(
    nc: Any, nats_server: Any, tmp_path: Path, page: Any
) -> None:
    await bind_widget_accounts(nc)
    # One message at once, then one every 2 s.
    env = {"OPENLINES_VISITOR_MESSAGES_PER_MINUTE": "30", "OPENLINES_VISITOR_MESSAGE_BURST": "1"}
    async with webchat_process(nats_server.url, tmp_path, **env) as base:
        await page.goto(f"{base}/demo")
        await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        await page.get_by_test_id("ol-launcher").click()
        first = await page.evaluate("window.openlinesWidget.send('first question')")
        second = await page.evaluate("window.openlinesWidget.send('second question, too fast')")
        mine = page.locator(f'[data-testid="ol-msg-out"][data-id="{second}"]')

        async def refused() -> bool:
            return await metric(base, "openlines_webchat_rate_limited_total", limit="messages") >= 1

        await wait_for(refused, what="the second message refused by the rate limit")
        # The visitor is told, the message waits as "sending" (no "not sent – retry" button).
        notice = page.get_by_test_id("ol-notice")
        await wait_for(lambda: notice.inner_text(), what="the notice")
        assert "too fast" in await notice.inner_text()
        assert await page.get_by_test_id("ol-retry").count() == 0
        # After retry_after the widget sends the same id again by itself: stored once, notice gone.
        await mine.and_(page.locator('[data-status="sent"]')).wait_for(state="attached", timeout=30_000)
        sent_first = page.locator(f'[data-testid="ol-msg-out"][data-id="{first}"][data-status="sent"]')
        assert await sent_first.count() == 1
        assert await notice.inner_text() == ""
        assert sorted(await stored_texts(nc)) == ["first question", "second question, too fast"]


async def test_the_widget_renews_an_expired_token_for_the_same_visitor_by_itself(
    nc: Any, nats_server: Any, tmp_path: Path, page: Any
) -> None:
    await bind_widget_accounts(nc)
    ttl = 3600
    async with webchat_process(nats_server.url, tmp_path, OPENLINES_VISITOR_TTL=str(ttl)) as base:
        visitor = "R" * 22
        expired = sign(SECRET, VisitorToken("demo", visitor, int(time.time()) - ttl - 60))
        host = base.removeprefix("http://")
        saved = json.dumps({"token": expired, "visitor": visitor, "lastSeq": 0, "items": []})
        # The page's storage holds a visitor whose token ran out while they were away.
        await page.add_init_script(
            f"window.localStorage.setItem({json.dumps('openlines:' + host + ':demo')}, {json.dumps(saved)})"
        )
        await page.goto(f"{base}/demo")
        await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        assert await page.evaluate("window.openlinesWidget.visitor") == visitor
        renewed = await page.evaluate("window.openlinesWidget.token")
        assert renewed and renewed != expired
        await page.evaluate("window.openlinesWidget.send('still me')")
        await page.locator('[data-testid="ol-msg-out"][data-status="sent"]').wait_for(state="attached")
        assert await stored_texts(nc) == ["still me"]
