"""Who may do what, in headless Chromium against the real desk and router: an operator without the
open-lines permission, an admin-only account, a supervisor reading a live chat before intercepting
it, and a sign-out that makes a copied cookie worthless."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from support import apply_lines, client_writes, running_router
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, submit_login
from support.timing import wait_for

from desk.settings import Settings
from openlines import bus
from openlines.runner import Service
from openlines.state import OperatorAccount, OperatorState, Session

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml
    buckets = await bus.Buckets(nc.jetstream()).open()
    anna, _ = await bus.kv_get(buckets.accounts, "anna", OperatorAccount)
    assert anna is not None
    # An operator whose account lacks the open-lines permission.
    dora = OperatorAccount(id="dora", name="Dora Nowak", password_hash=anna.password_hash, roles=["operator"], permissions=[])
    await buckets.accounts.put("dora", msgspec.json.encode(dora))
    async with running_router(nats_server.url), running_desk(nats_server.url, "access-browser-secret-01-Kq7Zt9Wm3xRv") as svc:
        yield svc


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def page_of(browser: Any, desk: Service[Settings]) -> Any:
    return await new_page(browser, desk_url(desk))


async def test_an_operator_without_the_permission_sees_no_chats_and_is_told_why(desk: Service[Settings], browser: Any) -> None:
    page = await page_of(browser, desk)
    await submit_login(page, "dora")
    await expect(page.get_by_test_id("denied-reason")).to_have_text(
        "Your account lacks the open-lines permission: ask an administrator."
    )
    assert await page.get_by_test_id("chat-list").count() == 0
    await page.goto("/")
    assert page.url.endswith("/login")  # no session was opened


async def test_an_admin_only_account_lands_on_the_admin_pages(desk: Service[Settings], browser: Any) -> None:
    page = await page_of(browser, desk)
    await submit_login(page, "admin")
    await page.wait_for_url(re.compile(r"/admin(/[a-z]*)?$"))
    await page.goto("/")
    await page.wait_for_url(re.compile(r"/admin(/[a-z]*)?$"))


async def test_an_admin_without_the_open_lines_permission_opens_the_supervisor_view(
    desk: Service[Settings], browser: Any
) -> None:
    """The Roles page and the docs say admins may watch the lines: the workspace's own
    requirements (the open-lines permission, an operator role) are not theirs."""
    page = await page_of(browser, desk)
    await submit_login(page, "admin")
    await page.wait_for_url(re.compile(r"/admin(/[a-z]*)?$"))
    answer = await page.goto("/supervisor")
    assert answer is not None and answer.status == 200
    await expect(page.get_by_test_id("supervisor-lines")).to_contain_text("Customer support")
    listing = await page.request.get(desk_url(desk) + "/api/supervisor")
    assert listing.status == 200, await listing.text()


async def test_a_supervisor_reads_a_live_chat_and_then_intercepts_it(nc: Any, desk: Service[Settings], browser: Any) -> None:
    js = nc.jetstream()
    boris = await page_of(browser, desk)
    await submit_login(boris, "boris")
    await go_online(boris)
    await client_writes(nc, "v-sup", "sup-1", "My order never came", name="Maria Client")
    item = boris.get_by_test_id("chat-item").filter(has_text="Maria Client")
    sid = await item.get_attribute("data-session-id")
    assert sid
    await item.click()
    await boris.get_by_test_id("accept").click()
    await boris.get_by_test_id("reply-input").fill("Let me look into it.")
    await boris.get_by_test_id("reply-input").press("Enter")

    anna = await page_of(browser, desk)  # a supervisor, not online herself
    await submit_login(anna, "anna")
    await anna.goto("/supervisor")
    row = anna.locator(f'[data-testid="sup-session"][data-session-id="{sid}"]')
    await row.get_by_test_id("sup-read").click()
    watch = anna.get_by_test_id("sup-watch-transcript")
    await expect(anna.get_by_test_id("sup-watch-title")).to_contain_text("Maria Client")
    await expect(watch).to_contain_text("My order never came")
    await expect(watch).to_contain_text("Let me look into it.")
    # Live: what the client writes next shows while she reads.
    await client_writes(nc, "v-sup", "sup-2", "It has been two weeks!", name="Maria Client")
    await expect(watch).to_contain_text("It has been two weeks!")

    await anna.get_by_test_id("sup-watch-intercept").click()
    await expect(anna.get_by_test_id("sup-watch-intercept")).to_have_text("Yours")
    await expect(boris.locator(f'[data-testid="chat-item"][data-session-id="{sid}"]')).to_have_count(0)
    buckets = await bus.Buckets(js).open()

    async def anna_holds() -> bool:
        s, _ = await bus.kv_get(buckets.sessions, sid, Session)
        return s is not None and s.operator_id == "anna"

    await wait_for(anna_holds, what="the intercepted chat held by anna")


async def test_after_sign_out_a_copied_cookie_no_longer_opens_the_workspace(desk: Service[Settings], browser: Any) -> None:
    page = await page_of(browser, desk)
    await submit_login(page, "anna")
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    cookies = [c for c in await page.context.cookies() if c["name"] == "ol_desk"]
    assert len(cookies) == 1

    thief = await page_of(browser, desk)
    await thief.context.add_cookies(cookies)
    await thief.goto("/")
    await expect(thief.get_by_test_id("operator-name")).to_have_text("Anna Petrova")
    await expect(thief.get_by_test_id("connection")).to_have_attribute("data-state", "live")

    await page.get_by_test_id("logout").click()
    await page.wait_for_url(re.compile(r"/login$"))
    # The other page's live connection is closed and it finds itself signed out.
    await thief.wait_for_url(re.compile(r"/login$"))
    await thief.goto("/")
    await thief.wait_for_url(re.compile(r"/login$"))


async def test_an_operator_starts_online_after_signing_in_and_a_reload_keeps_the_status_chosen(
    nc: Any, desk: Service[Settings], browser: Any
) -> None:
    page = await page_of(browser, desk)
    await submit_login(page, "boris")
    await expect(page.get_by_test_id("status-online")).to_have_attribute("aria-pressed", "true")
    buckets = await bus.Buckets(nc.jetstream()).open()

    async def status() -> str:
        st, _ = await bus.kv_get(buckets.operators, "boris", OperatorState)
        return st.status if st is not None else ""

    await wait_for(lambda: _is(status, "online"), what="boris online at the router")
    assert "signed_in" not in page.url  # only the sign-in does it
    await page.get_by_test_id("status-away").click()
    await expect(page.get_by_test_id("status-away")).to_have_attribute("aria-pressed", "true")
    await page.reload()
    await expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "live")
    await expect(page.get_by_test_id("status-away")).to_have_attribute("aria-pressed", "true")
    assert await status() == "away"


async def _is(probe: Any, wanted: str) -> bool:
    return await probe() == wanted
