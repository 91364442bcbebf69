"""The workspace's views, search, filters and tags in headless Chromium, against the real desk and router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import apply_lines, client_writes, running_router
from support.desk import BROWSER_MARKS, chromium, desk_url, new_page, running_desk, sign_in_live
from support.views import LINES

from desk.settings import Settings
from openlines.runner import Service

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url), running_desk(nats_server.url, "views-browser-secret-01-Kq7Zt9Wm3xRv") as svc:
        yield svc


async def test_an_operator_takes_from_the_queue_tags_searches_and_filters_and_sees_nothing_of_another_line(
    nc: Any, desk: Service[Settings]
) -> None:
    errors: list[str] = []
    async with chromium() as browser:
        page = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(page, "boris")
        await expect(page.get_by_test_id("status-online")).to_have_attribute("aria-pressed", "true")
        await page.get_by_test_id("status-away").click()  # no offers: the chats stay in the queue
        await expect(page.get_by_test_id("status-away")).to_have_attribute("aria-pressed", "true")
        await client_writes(nc, "Alice Parker", "1", "Where is my parcel?", phone="+371 2000 0001")
        await client_writes(nc, "Bob Stone", "1", "I want a refund", email="bob@example.com")
        await client_writes(nc, "Sam Secret", "1", "About the confidential merger", account="vip")

        # The queue: the waiting chats of boris's line, not the vip line's.
        await page.get_by_test_id("view-queue").click()
        items = page.get_by_test_id("view-item")
        await expect(items).to_have_count(2)
        await expect(items.filter(has_text="Alice Parker")).to_be_visible()
        await expect(items.filter(has_text="Bob Stone")).to_be_visible()
        await expect(page.get_by_test_id("chat-list")).to_be_hidden()

        # Open one: read it, only a private note until it is taken; Take makes it mine to answer.
        await items.filter(has_text="Alice Parker").click()
        await expect(page.get_by_test_id("transcript")).to_contain_text("Where is my parcel?")
        await expect(page.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "true")
        await expect(page.get_by_test_id("note-toggle")).to_be_disabled()
        await expect(page.get_by_test_id("close")).to_be_hidden()
        await page.get_by_test_id("take").click()
        await expect(page.get_by_test_id("take")).to_be_hidden()
        await expect(page.get_by_test_id("reply-input")).to_be_enabled()
        await expect(page.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "false")  # a reply now
        await expect(page.get_by_test_id("note-toggle")).to_be_enabled()
        await expect(page.get_by_test_id("transcript")).to_contain_text("Taken from the queue by Boris Ivanov")
        await expect(items).to_have_count(1)  # the queue now holds Bob only
        await expect(page.get_by_test_id("new-chat-toast")).to_be_hidden()  # taken, not offered: no alarm
        await page.get_by_test_id("view-mine").click()
        await expect(page.get_by_test_id("chat-item").filter(has_text="Alice Parker")).to_be_visible()

        # Tags: added with Enter, shown on the chat and in the list, removed with ×; each in the transcript.
        await page.get_by_test_id("tag-input").fill("Delivery")
        await page.get_by_test_id("tag-input").press("Enter")
        await expect(page.get_by_test_id("tag")).to_have_count(1)
        await expect(page.get_by_test_id("tag")).to_contain_text("#delivery")
        await page.get_by_test_id("tag-input").fill("urgent")
        await page.get_by_test_id("tag-input").press("Enter")
        await expect(page.get_by_test_id("tag")).to_have_count(2)
        await page.locator('[data-testid="tag"][data-tag="urgent"] [data-testid="tag-remove"]').click()
        await expect(page.get_by_test_id("tag")).to_have_count(1)
        await expect(page.get_by_test_id("transcript")).to_contain_text("Boris Ivanov removed the tag urgent")
        await expect(page.get_by_test_id("chat-item").filter(has_text="Alice Parker")).to_contain_text("#delivery")
        await page.get_by_test_id("tag-input").fill("two words")
        await page.get_by_test_id("tag-input").press("Enter")
        await expect(page.get_by_test_id("error")).to_contain_text("may hold letters, digits")

        # Search from My chats looks through everything boris may see: words, phone digits, e-mail.
        search = page.get_by_test_id("search")
        await search.fill("refund")
        await expect(items).to_have_count(1)
        await expect(items.first).to_contain_text("Bob Stone")
        await expect(page.get_by_test_id("view-snippet")).to_contain_text("refund")
        await search.fill("2000 0001")
        await expect(items).to_have_count(1)
        await expect(items.first).to_contain_text("Alice Parker")
        await search.fill("bob@example")
        await expect(items.first).to_contain_text("Bob Stone")
        # The vip line's client is not found by boris, by his words or his name.
        for q in ("merger", "Sam Secret"):
            await search.fill(q)
            await expect(page.get_by_test_id("view-empty")).to_have_text("Nothing found.")
            await expect(items).to_have_count(0)

        # Filters: by tag, by status.
        await search.fill("")
        await page.get_by_test_id("view-lines").click()
        await expect(items).to_have_count(2)
        await page.get_by_test_id("filter-tag").select_option("delivery")
        await expect(items).to_have_count(1)
        await expect(items.first).to_contain_text("Alice Parker")
        await page.get_by_test_id("filter-tag").select_option("")
        await page.get_by_test_id("filter-status").select_option("waiting")
        await expect(items).to_have_count(1)
        await expect(items.first).to_contain_text("Bob Stone")
        await page.get_by_test_id("filter-status").select_option("")

        # Closed: a chat boris closes is there, with its tag.
        await page.get_by_test_id("view-mine").click()
        await page.get_by_test_id("chat-item").filter(has_text="Alice Parker").click()
        await page.get_by_test_id("close").click()
        await page.get_by_test_id("close-confirm").click()
        await expect(page.get_by_test_id("chat-item")).to_have_count(0)
        await page.get_by_test_id("view-closed").click()
        await expect(items).to_have_count(1)
        await expect(items.first).to_contain_text("Alice Parker")
        await expect(items.first).to_contain_text("#delivery")
        # A closed conversation can still be read, tagged and annotated (a note, never a reply); it stays open meanwhile.
        await items.first.click()
        await expect(page.get_by_test_id("note-toggle")).to_be_disabled()
        await expect(page.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "true")
        await page.get_by_test_id("tag-input").fill("resolved")
        await page.get_by_test_id("tag-input").press("Enter")
        await expect(page.get_by_test_id("transcript")).to_contain_text("Boris Ivanov added the tag resolved")
        await expect(items.first).to_contain_text("#resolved")
        await expect(page.get_by_test_id("chat-title")).to_have_text("Alice Parker")
        await expect(page.get_by_test_id("tag")).to_have_count(2)
    assert errors == []
