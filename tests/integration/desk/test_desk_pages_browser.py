"""The client card, the CRM page and the supervisor view in headless Chromium,
against the real desk, router and crm-sync (built-in CRM)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import apply_lines, client_writes, running_router
from support.crm import linked, running_crm_sync
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, running_desk, submit_login
from support.desk import new_page as blank_page

from desk.settings import Settings
from openlines.runner import Service

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml
    url = nats_server.url
    async with running_router(url), running_crm_sync(url), running_desk(url, "browser-test-cookie-secret-02-Kq7Zt9Wm3xRv") as svc:
        yield svc


@pytest.fixture
async def browser(desk: Service[Settings]) -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def new_page(browser: Any, desk: Service[Settings], errors: list[str]) -> Any:
    page = await blank_page(browser, desk_url(desk), errors, width=1360, height=800)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and "403" not in m.text else None)
    return page


async def sign_in(page: Any, login: str) -> None:
    await submit_login(page, login)
    await playwright_api.expect(page.get_by_test_id("operator-name")).to_be_visible()


async def test_client_card_crm_page_and_supervisor_view_in_a_browser(nc: Any, browser: Any, desk: Service[Settings]) -> None:
    expect = playwright_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    page = await new_page(browser, desk, errors)
    await sign_in(page, "anna")
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    await go_online(page)

    await client_writes(nc, "v-br1", "1", "Hello, I want to order 3 chairs", name="Marta Ozola", email="marta@example.com")
    item = page.locator('[data-testid="chat-item"]').filter(has_text="Marta Ozola")
    await expect(item).to_be_visible()
    sid = await item.get_attribute("data-session-id")
    assert sid
    await linked(nc, sid)
    await item.click()

    card = page.get_by_test_id("client-card")
    await expect(card.get_by_test_id("card-name")).to_have_text("Marta Ozola")
    await expect(card.get_by_test_id("card-email")).to_have_text("marta@example.com")
    await expect(card.get_by_test_id("card-channel")).to_have_text("webchat")
    lead = card.locator('[data-testid="card-crm-record"][data-kind="lead"]')
    await expect(lead).to_have_text("Lead #1")
    await expect(card.get_by_test_id("card-previous-note")).to_contain_text("at most 10 shown")
    await page.get_by_test_id("accept").click()  # answered chats stay with anna when she steps away
    await expect(page.get_by_test_id("accept")).to_be_hidden()
    await page.screenshot(path=str(ARTIFACTS / "desk-client-card.png"))

    # The lead on the CRM page, found from the card (in a new tab: the workspace stays connected).
    workspace = page
    async with page.context.expect_page() as opened:
        await lead.click()
    page = await opened.value
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await expect(page).to_have_url(f"http://127.0.0.1:{desk.port}/crm?record=lead-1#lead-1")
    row = page.locator('[data-testid="crm-lead"][data-record-id="1"]')
    await expect(row.get_by_test_id("crm-source")).to_have_text("OPENLINE")
    await expect(row.get_by_test_id("crm-stage")).to_have_text("NEW")
    await expect(row.get_by_test_id("crm-transcript-link")).to_have_attribute("href", f"/transcript/{sid}")
    await page.get_by_test_id("crm-clear").click()
    await page.get_by_test_id("crm-search").fill("MARTA@example")
    await page.get_by_test_id("crm-search-submit").click()
    await expect(page.locator('[data-testid="crm-lead"]')).to_have_count(1)
    await page.screenshot(path=str(ARTIFACTS / "desk-crm.png"), full_page=True)
    await page.get_by_test_id("crm-search").fill("nobody at all")
    await page.get_by_test_id("crm-search-submit").click()
    await expect(page.get_by_test_id("crm-leads-empty")).to_be_visible()

    # Anna steps away: the next client waits in the queue, and the supervisor view shows it live.
    await workspace.get_by_test_id("status-away").click()
    await expect(workspace.get_by_test_id("status-away")).to_have_attribute("aria-pressed", "true")
    async with workspace.context.expect_page() as opened:
        await workspace.get_by_test_id("nav-supervisor").click()
    page = await opened.value
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    line = page.locator('[data-testid="sup-line"][data-line-id="support"]')
    await expect(line.get_by_test_id("sup-waiting-count")).to_have_text("0")
    await expect(line.locator('[data-testid="sup-session"]')).to_have_count(1)
    await client_writes(nc, "v-br2", "1", "Hi, are you open today?", name="Liga Waiting")
    await expect(line.get_by_test_id("sup-waiting-count")).to_have_text("1", timeout=10_000)
    await expect(line.locator('[data-testid="sup-waiting-item"]')).to_contain_text("Liga Waiting")
    anna_row = line.locator('[data-testid="sup-operator"][data-operator-id="anna"]')
    await expect(anna_row.get_by_test_id("sup-operator-status")).to_have_text("away")
    await expect(anna_row).to_contain_text("1 / 4")
    await expect(anna_row).to_contain_text("open")  # the workspace tab is still connected
    await expect(page.get_by_test_id("sup-intercept-note")).to_contain_text("Intercept takes a chat over")
    await page.screenshot(path=str(ARTIFACTS / "desk-supervisor.png"), full_page=True)
    # The supervisor takes the waiting chat over: it opens in her workspace, answered.
    waiting_row = line.locator('[data-testid="sup-session"]').filter(has_text="Liga Waiting")
    await waiting_row.get_by_test_id("sup-intercept").click()
    await expect(line.get_by_test_id("sup-waiting-count")).to_have_text("0", timeout=10_000)
    taken = workspace.locator('[data-testid="chat-item"]').filter(has_text="Liga Waiting")
    await expect(taken).to_be_visible()
    await expect(taken.get_by_test_id("chat-status")).to_have_text("in progress")
    # Statistics are one click away for a supervisor, from the workspace and from the supervisor view.
    await expect(workspace.get_by_test_id("nav-stats")).to_have_attribute("href", "/stats")
    await page.get_by_test_id("nav-stats").click()
    await expect(page.get_by_test_id("stats-table")).to_be_visible()
    await expect(page.locator('[data-testid="stats-row"][data-line="support"]')).to_have_count(1)

    # A plain operator is refused the supervisor view, with the reason.
    boris = await new_page(browser, desk, errors)
    await sign_in(boris, "boris")
    await expect(boris.get_by_test_id("nav-supervisor")).to_have_count(0)
    await expect(boris.get_by_test_id("nav-stats")).to_have_count(0)
    response = await boris.goto("/supervisor")
    assert response is not None and response.status == 403
    await expect(boris.get_by_test_id("denied-reason")).to_contain_text("needs the supervisor or admin role")
    await boris.screenshot(path=str(ARTIFACTS / "desk-supervisor-refused.png"))
    assert errors == [], errors
