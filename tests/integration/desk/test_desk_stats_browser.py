"""The statistics page and the wallboard in headless Chromium with the real desk and router: a supervisor
sees the scripted day's figures and charts of their own line only, is refused another line, downloads the
CSV; an admin watches a line's wallboard follow a chat that waits and then is offered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import client_writes
from support.desk import BROWSER_MARKS, chromium, desk_url, desk_with_router, new_page, submit_login
from support.desk_admin import LINES
from support.stats_day import DAY, publish_day
from support.timing import scaled, wait_for

from openlines import commands
from openlines.commands import SetStatus
from openlines.runner import Service

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"


# Sales chats wait for boris as long as it takes (no auto-close), so the wallboard has something to show.
def _long() -> float:
    """Milliseconds a wallboard (it asks every 3 s) may take to show a change the router makes."""
    return scaled(20) * 1000


STILL_LINES = LINES.replace("auto_close_minutes = 0.02", "auto_close_minutes = 0")


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Any]]:
    async with desk_with_router(nc, nats_server.url, lines=STILL_LINES) as svc:
        yield svc


@pytest.fixture
async def browser(desk: Service[Any]) -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def test_a_supervisor_sees_figures_and_charts_of_their_line_only(nc: Any, browser: Any, desk: Service[Any]) -> None:
    expect = playwright_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    await publish_day(nc)
    errors: list[str] = []
    page = await new_page(browser, desk_url(desk), errors, width=1400, height=1000)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await submit_login(page, "anna")

    async def folded() -> bool:
        await page.goto(f"/stats?from={DAY}&to={DAY}")
        return await page.get_by_test_id("stats-behind").count() == 0

    await wait_for(folded, timeout=30, what="the scripted day folded into the statistics")
    lines = page.get_by_test_id("stats-line")
    await expect(lines).to_have_count(1)
    support = page.locator('[data-testid="stats-line"][data-line="support"]')
    row = support.get_by_test_id("stats-row")
    for testid, text in (
        ("stat-sessions", "7"),
        ("stat-answered", "4"),
        ("stat-missed", "1"),
        ("stat-open", "1"),
        ("stat-frt-p50", "30 s"),
        ("stat-frt-p90", "90 s"),
        ("stat-res-p50", "645 s"),
        ("stat-res-p90", "1800 s"),
        ("stat-rating", "3.7"),
        ("stat-rated", "3"),
        ("stat-offers-missed", "1"),
        ("stat-offers-passed", "1"),
        ("stat-sla", "83.3 %"),
    ):
        await expect(row.get_by_test_id(testid)).to_have_text(text)
    boris = support.locator('[data-testid="stats-operator"][data-operator="boris"]')
    await expect(boris).to_contain_text("Boris Ivanov")
    await expect(boris.get_by_test_id("stat-frt-p50")).to_have_text("55 s")
    await expect(boris.get_by_test_id("stat-sla")).to_have_text("50.0 %")
    await expect(support.locator('[data-testid="stats-channel"][data-channel="vk"]')).to_contain_text("1")
    # The charts are drawn in the page (uPlot canvases), their figures readable as a label.
    hours = support.get_by_test_id("chart-hours")
    await expect(hours.locator("canvas")).to_have_count(1)
    await expect(hours).to_have_attribute("aria-label", "00: 0, 01: 0, 02: 0, 03: 0, 04: 0, 05: 0, 06: 0, 07: 0, 08: 0, "
                                          "09: 2, 10: 2, 11: 0, 12: 0, 13: 0, 14: 2, 15: 0, 16: 0, 17: 0, 18: 0, 19: 0, "
                                          "20: 0, 21: 0, 22: 0, 23: 1")  # fmt: skip
    await expect(support.get_by_test_id("chart-days").locator("canvas")).to_have_count(1)
    await expect(support.get_by_test_id("chart-days")).to_have_attribute("aria-label", "03-02: 7")
    await page.screenshot(path=str(ARTIFACTS / "stats-page.png"), full_page=True)

    async with page.expect_download() as info:
        await page.get_by_test_id("stats-csv").click()
    download = await info.value
    text = await asyncio.to_thread(Path(await download.path()).read_text)
    assert text.splitlines()[1].startswith("support,Customer support,,,7,4,1,1,30.0,90.0,645.0,1800.0,3,3.667,1,1,1,83.3")

    assert errors == []
    # Another supervisor's line: refused, with the reason, on the page and the wallboard (the browser logs the 403s).
    refused = await page.goto(f"/stats?from={DAY}&to={DAY}&line=sales")
    assert refused is not None and refused.status == 403
    await expect(page.get_by_test_id("denied-reason")).to_contain_text("queue lists them")
    board = await page.goto("/stats/wallboard/sales")
    assert board is not None and board.status == 403


async def test_the_wallboard_follows_a_waiting_chat_until_it_is_offered(nc: Any, browser: Any, desk: Service[Any]) -> None:
    expect = playwright_api.expect
    errors: list[str] = []
    page = await new_page(browser, desk_url(desk), errors, width=1200, height=800)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await submit_login(page, "root")
    await page.goto("/stats")
    await page.locator('[data-testid="stats-line"][data-line="sales"]').get_by_test_id("wallboard-link").click()
    await expect(page).to_have_url(f"{desk_url(desk)}/stats/wallboard/sales")
    await expect(page.get_by_test_id("wb-waiting")).to_have_text("0")
    await expect(page.get_by_test_id("wb-online")).to_have_text("0")

    # boris, the only operator of sales, is offline: the chat waits, and the wallboard shows it.
    await client_writes(nc, "client-w", "m1", "Anyone?", account="shop")
    await expect(page.get_by_test_id("wb-waiting")).to_have_text("1", timeout=_long())
    await expect(page.get_by_test_id("wb-longest")).to_contain_text(" s")
    await expect(page.get_by_test_id("wb-today")).to_have_text("1", timeout=_long())
    await page.screenshot(path=str(ARTIFACTS / "stats-wallboard.png"))

    # boris comes online: the router offers him the chat; nobody waits, one operator online and busy.
    await commands.call(nc, "status", SetStatus(operator_id="boris", status="online"))
    await expect(page.get_by_test_id("wb-waiting")).to_have_text("0", timeout=_long())
    await expect(page.get_by_test_id("wb-online")).to_have_text("1")
    await expect(page.get_by_test_id("wb-busy")).to_have_text("1")
    await expect(page.locator('[data-testid="wb-operator"][data-operator="boris"]')).to_contain_text("online")
    assert errors == []
