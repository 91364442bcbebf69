"""The workspace in headless Chromium, against the real desk and router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import apply_lines, client_writes, running_router
from support.desk import BROWSER_MARKS, chromium, go_online, new_page, sign_in_live
from support.servers import creds
from support.timing import wait_for

from desk.app import setup
from desk.settings import Settings
from openlines import bus
from openlines.runner import Service, launch
from openlines.state import OperatorState, Session

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"


class Desk:
    """The desk under test; can be stopped and started again on the same port."""

    def __init__(self, nats_url: str) -> None:
        self.nats_url = nats_url
        self.port = 0
        self.svc: Service[Settings] | None = None

    async def start(self) -> None:
        settings = Settings(
            nats_url=self.nats_url,
            http_port=self.port,
            cookie_secret="browser-test-cookie-secret-01-Kq7Zt9Wm3xRv",
            **creds("desk"),
        )
        self.svc = await launch("desk", settings, setup)
        self.port = self.svc.port

    async def stop(self) -> None:
        if self.svc is not None:
            await self.svc.stop()
            self.svc = None


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Desk]:
    await apply_lines(nc)  # deploy/lines.example.toml
    async with running_router(nats_server.url):
        desk = Desk(nats_server.url)
        await desk.start()
        yield desk
        await desk.stop()


@pytest.fixture
def console_errors() -> list[str]:
    """Errors the browser logged (CSP violations, failed requests...)."""
    return []


@pytest.fixture
async def page(desk: Desk, console_errors: list[str]) -> AsyncIterator[Any]:
    errors: list[str] = []
    async with chromium() as browser:
        pg = await new_page(browser, f"http://127.0.0.1:{desk.port}", errors)
        pg.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        yield pg
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def test_operator_signs_in_takes_a_chat_replies_and_closes_it(page: Any, nc: Any, console_errors: list[str]) -> None:
    expect = playwright_api.expect

    await page.goto("/login")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "desk-login.png"))
    await sign_in_live(page, "anna")
    await expect(page.get_by_test_id("operator-name")).to_have_text("Anna Petrova")

    await go_online(page)

    await client_writes(nc, "visitor-b1", "b-1", "Hello! My parcel has not arrived.", name="Maria Client")
    item = page.locator('[data-testid="chat-item"]').filter(has_text="Maria Client")
    await expect(item).to_be_visible()
    await expect(page.get_by_test_id("new-chat-toast")).to_contain_text("New chat: Maria Client")
    await expect(page).to_have_title("(1) New chat · openlines desk")
    sid = await item.get_attribute("data-session-id")
    assert sid

    await item.click()
    transcript = page.get_by_test_id("transcript")
    await expect(transcript.locator('[data-testid="transcript-entry"][data-direction="in"]')).to_contain_text(
        "Hello! My parcel has not arrived."
    )
    await expect(page).to_have_title("openlines desk")

    await page.get_by_test_id("accept").click()
    await expect(page.get_by_test_id("accept")).to_be_hidden()
    await expect(item.get_by_test_id("chat-status")).to_have_text("in progress")

    await page.get_by_test_id("reply-input").fill("Hello Maria! Let me look up your parcel.")
    await page.get_by_test_id("reply-input").press("Enter")
    await expect(transcript.locator('[data-testid="transcript-entry"][data-direction="out"]').last).to_contain_text(
        "Hello Maria! Let me look up your parcel."
    )
    await expect(page.get_by_test_id("reply-input")).to_have_value("")

    # A second client shows up while the first chat is open: a live push to the list.
    await client_writes(nc, "visitor-b2", "b-2", "Hi, a question about prices", name="Oleg Buyer")
    await expect(page.locator('[data-testid="chat-item"]').filter(has_text="Oleg Buyer")).to_be_visible()
    await client_writes(nc, "visitor-b1", "b-3", "The tracking number is 42", name="Maria Client")
    await expect(transcript).to_contain_text("The tracking number is 42")

    await page.screenshot(path=str(ARTIFACTS / "desk-workspace.png"))

    await page.get_by_test_id("close").click()
    await page.get_by_test_id("close-confirm").click()
    await expect(page.locator(f'[data-testid="chat-item"][data-session-id="{sid}"]')).to_have_count(0)
    await expect(page.get_by_test_id("placeholder")).to_contain_text("closed")
    await expect(page.get_by_test_id("chat-count")).to_have_text("1")
    assert console_errors == []


async def test_a_chat_that_arrives_while_the_desk_is_down_shows_after_the_reconnect(page: Any, nc: Any, desk: Desk) -> None:
    expect = playwright_api.expect
    js = nc.jetstream()
    await sign_in_live(page, "anna")
    await go_online(page)

    await desk.stop()
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "down")
    await client_writes(nc, "visitor-r1", "r-1", "Anyone there?", name="Vera Late")
    buckets = await bus.Buckets(js).open()

    async def assigned_to_anna() -> bool:
        state, _ = await bus.kv_get(buckets.operators, "anna", OperatorState)
        return state is not None and len(state.sessions) == 1

    await wait_for(assigned_to_anna, what="the router giving the chat to anna")
    await desk.start()

    item = page.locator('[data-testid="chat-item"]').filter(has_text="Vera Late")
    await expect(item).to_be_visible(timeout=20_000)
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    await item.click()
    await expect(page.get_by_test_id("transcript")).to_contain_text("Anyone there?")


async def test_spam_needs_a_second_click_and_then_closes_the_chat(page: Any, nc: Any) -> None:
    expect = playwright_api.expect
    await sign_in_live(page, "anna")
    await go_online(page)
    await client_writes(nc, "visitor-s1", "s-1", "Buy cheap watches!", name="Spam Sender")
    item = page.locator('[data-testid="chat-item"]').filter(has_text="Spam Sender")
    await item.click()
    await page.get_by_test_id("accept").click()
    await expect(item.get_by_test_id("chat-status")).to_have_text("in progress")
    sid = await item.get_attribute("data-session-id")
    assert sid

    # The first click only asks: the chat stays open until the confirm button is clicked.
    await page.get_by_test_id("spam").click()
    await expect(page.get_by_test_id("spam")).to_be_hidden()
    await expect(page.get_by_test_id("spam-confirm")).to_be_visible()
    await expect(page.get_by_test_id("spam-confirm")).to_be_focused()
    await expect(item).to_have_count(1)

    await page.get_by_test_id("spam-confirm").click()
    await expect(page.locator(f'[data-testid="chat-item"][data-session-id="{sid}"]')).to_have_count(0)
    await expect(page.get_by_test_id("placeholder")).to_contain_text("Marked as spam")
    buckets = await bus.Buckets(nc.jetstream()).open()

    async def closed() -> bool:
        s, _ = await bus.kv_get(buckets.sessions, sid, Session)
        return s is not None and s.status == "closed"

    await wait_for(closed, what="the spam chat closed")
