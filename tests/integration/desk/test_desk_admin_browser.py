"""The admin pages in headless Chromium with the real desk and router: an admin edits a line, sees the
doctor's finding before saving, saves, and the running router uses the change; the operators page says why
an operator sees no chats, and fixing the permission there changes that."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import client_writes, outbound_for
from support.desk import BROWSER_MARKS, chromium, desk_url, desk_with_router, new_page, submit_login
from support.desk_admin import DEMO_HASH, LINES, in_line
from support.timing import wait_for

from openlines import bus
from openlines.apply import apply, live
from openlines.runner import Service

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"

# An admin-only account: no operator role, no open-lines permission. The desk sends it to the admin pages.
WITH_ADMIN_ONLY = (
    LINES
    + f"""
[operators.ada]
name = "Ada Admin"
password_hash = "{DEMO_HASH}"
roles = ["admin"]
permissions = []
"""
)


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Any]]:
    async with desk_with_router(nc, nats_server.url, lines=WITH_ADMIN_ONLY) as svc:
        yield svc


@pytest.fixture
async def browser(desk: Service[Any]) -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


async def test_an_admin_edits_a_line_sees_the_doctor_saves_and_the_router_uses_it(
    nc: Any, browser: Any, desk: Service[Any]
) -> None:
    expect = playwright_api.expect
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    page = await new_page(browser, desk_url(desk), errors, width=1360, height=900)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    await submit_login(page, "ada")
    await expect(page).to_have_url(f"http://127.0.0.1:{desk.port}/admin/lines")

    editor = page.get_by_test_id("lines-toml")
    text = await editor.input_value()
    text = in_line(
        text, "support", 'welcome = "Hello {client_name}, this is support."', 'welcome = "Good day {client_name}, support here."'
    )
    text = in_line(text, "support", "[lines.queue]\n", "[lines.queue]\nwait_seconds = 5\n")
    await editor.fill(text)
    await page.get_by_test_id("lines-check").click()
    finding = page.locator('[data-testid="finding"][data-code="queue-wait-seconds"]')
    await expect(finding).to_be_visible()
    await expect(finding).to_contain_text("lines[")
    await expect(page.get_by_test_id("admin-message")).to_contain_text("nothing is saved yet")

    await page.get_by_test_id("lines-save").click()
    await expect(page.get_by_test_id("confirm-note")).to_be_visible()
    await expect(page.get_by_test_id("lines-save")).to_have_text("Save anyway")
    await page.screenshot(path=str(ARTIFACTS / "admin-lines-doctor.png"), full_page=True)
    await page.get_by_test_id("lines-save").click()
    await expect(page.get_by_test_id("admin-message")).to_contain_text("Saved")
    await expect(page.get_by_test_id("lines-toml")).to_contain_text("Good day {client_name}, support here.")

    # The running router reloaded the line: a new client gets the new welcome.
    await client_writes(nc, "browser-visitor", "m1", "Hello?", name="Ilze")

    async def welcomed() -> bool:
        return any(o.text == "Good day Ilze, support here." for o in await outbound_for(nc, "browser-visitor"))

    await wait_for(welcomed, timeout=15, what="the new welcome from the router")

    # Carl lacks the open-lines permission and sits in no queue: the operators page says so.
    await page.get_by_test_id("nav-admin-operators").click()
    carl = page.locator('[data-testid="operator-row"][data-operator="carl"]')
    why = carl.get_by_test_id("operator-why")
    await expect(why).to_contain_text("lacks the 'openlines' (open lines) permission")
    await expect(why).to_contain_text("not a member of any line's queue")
    ada = page.locator('[data-testid="operator-row"][data-operator="ada"]')
    await expect(ada.get_by_test_id("operator-no-chats-expected")).to_be_visible()
    await page.screenshot(path=str(ARTIFACTS / "admin-operators.png"), full_page=True)

    # Giving carl the permission leaves one reason: the queue.
    await carl.get_by_test_id("operator-edit").click()
    await page.get_by_test_id("op-perm-openlines").check()
    await page.get_by_test_id("op-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")
    why = page.locator('[data-testid="operator-row"][data-operator="carl"]').get_by_test_id("operator-why")
    await expect(why).not_to_contain_text("permission")
    await expect(why).to_contain_text("not a member of any line's queue")
    assert errors == []
    await page.context.close()


async def test_the_new_operator_form_checks_the_login_in_the_browser_and_keeps_what_was_typed_when_refused(
    browser: Any, desk: Service[Any]
) -> None:
    expect = playwright_api.expect
    errors: list[str] = []
    page = await new_page(browser, desk_url(desk), errors, width=1360, height=900)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await submit_login(page, "ada")
    await page.get_by_test_id("nav-admin-operators").click()
    login = page.get_by_test_id("op-id")
    await login.fill("vera petrova")  # a space: not a login
    assert await login.evaluate("e => e.validity.patternMismatch") is True
    await login.fill("vera-p_2")
    assert await login.evaluate("e => e.validity.valid") is True
    await page.get_by_test_id("op-name").fill("Vera Petrova")
    await page.get_by_test_id("op-role-supervisor").check()
    await page.get_by_test_id("op-password").fill("short")  # refused by the desk
    await page.get_by_test_id("op-save").click()
    await expect(page.get_by_test_id("config-error").first).to_contain_text("password")
    await expect(page.get_by_test_id("op-id")).to_have_value("vera-p_2")
    await expect(page.get_by_test_id("op-name")).to_have_value("Vera Petrova")
    await expect(page.get_by_test_id("op-role-supervisor")).to_be_checked()
    await expect(page.get_by_test_id("op-password")).to_have_value("")  # a password is never sent back
    # The refused save is a 400 (Chromium logs it); nothing else, such as "Pattern attribute value ... is
    # not a valid regular expression" (then the browser checked nothing).
    assert [e for e in errors if "400 (Bad Request)" not in e] == []
    await page.context.close()


async def test_an_admin_manages_api_tokens_in_the_pages_and_a_script_uses_one_until_it_is_revoked(
    browser: Any, desk: Service[Any]
) -> None:
    expect = playwright_api.expect
    errors: list[str] = []
    page = await new_page(browser, desk_url(desk), errors, width=1360, height=900)
    await submit_login(page, "ada")  # admin only: the nav still offers the supervisor view and the CRM
    for nav in ("nav-supervisor", "nav-crm", "nav-admin-tokens"):
        await expect(page.get_by_test_id(nav)).to_be_visible()
    await page.get_by_test_id("nav-crm").click()
    await expect(page).to_have_url(f"{desk_url(desk)}/crm")
    await page.get_by_test_id("nav-admin-tokens").click()
    await expect(page.get_by_test_id("no-tokens")).to_be_visible()

    # A bad expiry is refused and the form keeps what was typed.
    await page.get_by_test_id("token-name").fill("nightly report")
    await page.get_by_test_id("token-role").select_option("supervisor")
    await page.get_by_test_id("token-expires-in").fill("soon")
    await page.get_by_test_id("token-create").click()
    await expect(page.get_by_test_id("token-error")).to_contain_text("expiry 'soon'")
    await expect(page.get_by_test_id("token-name")).to_have_value("nightly report")
    await page.get_by_test_id("token-expires-in").fill("30d")
    await page.get_by_test_id("token-create").click()
    token = await page.get_by_test_id("token-value").input_value()
    assert token.startswith("olt_")
    row = page.get_by_test_id("token-row").filter(has_text="nightly report")
    await expect(row).to_contain_text("supervisor")
    await expect(row.get_by_test_id("token-expires")).not_to_have_text("never")

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{desk_url(desk)}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
        await page.reload()  # the browser sends the form again: no second token, and no secret shown
        await expect(page.get_by_test_id("admin-message")).to_contain_text("sent before")
        assert token not in await page.content()
        await expect(page.get_by_test_id("token-row")).to_have_count(1)
        await page.get_by_test_id("token-row").filter(has_text="nightly report").get_by_test_id("token-revoke").click()
        await expect(page.get_by_test_id("admin-message")).to_have_text("Revoked.")
        await expect(page.get_by_test_id("no-tokens")).to_be_visible()
        async with http.get(f"{desk_url(desk)}/api/v1/sessions", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 401
    assert errors == []
    await page.context.close()


async def test_an_admin_puts_an_operator_in_queues_from_the_operators_page(nc: Any, browser: Any, desk: Service[Any]) -> None:
    expect = playwright_api.expect
    page = await new_page(browser, desk_url(desk), width=1360, height=900)
    await submit_login(page, "ada")
    await page.get_by_test_id("nav-admin-operators").click()
    await page.locator('[data-testid="operator-row"][data-operator="carl"]').get_by_test_id("operator-edit").click()
    await expect(page.get_by_test_id("op-line-support")).not_to_be_checked()
    await page.get_by_test_id("op-perm-openlines").check()
    await page.get_by_test_id("op-line-support").check()
    await page.get_by_test_id("op-line-sales").check()
    await page.get_by_test_id("op-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")
    carl = page.locator('[data-testid="operator-row"][data-operator="carl"]')
    await expect(carl).to_contain_text("sales, support")
    live_cfg = await live(await bus.Buckets(nc.jetstream()).open())
    queues = {line.id: line.queue.operators for line in live_cfg.lines}
    assert queues == {"support": ["anna", "boris", "carl"], "sales": ["boris", "carl"]}

    # Out of one queue again; the other members and their order stay.
    await carl.get_by_test_id("operator-edit").click()
    await page.get_by_test_id("op-line-support").uncheck()
    await page.get_by_test_id("op-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")
    live_cfg = await live(await bus.Buckets(nc.jetstream()).open())
    assert {line.id: line.queue.operators for line in live_cfg.lines} == {
        "support": ["anna", "boris"],
        "sales": ["boris", "carl"],
    }
    await page.context.close()


async def test_a_supervisor_edits_the_quick_answers_of_her_lines_only(nc: Any, browser: Any, desk: Service[Any]) -> None:
    expect = playwright_api.expect
    page = await new_page(browser, desk_url(desk), width=1360, height=900)
    await submit_login(page, "anna")  # supervisor, in the queue of "support" but not of "sales"
    await page.goto("/supervisor")
    await page.get_by_test_id("nav-quick-answers").click()
    await expect(page.get_by_test_id("qa-line")).to_have_count(1)
    support = page.locator('[data-testid="qa-line"][data-line="support"]')
    await support.get_by_test_id("qa-new").fill("Thank you for waiting!\nLet me check.")
    await support.get_by_test_id("qa-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")
    await support.get_by_test_id("qa-new").fill("Could you send me your order number, please?")
    await support.get_by_test_id("qa-save").click()
    await expect(support.get_by_test_id("qa-answer")).to_have_count(2)

    async def quick(line_id: str) -> list[str]:
        cfg = await live(await bus.Buckets(nc.jetstream()).open())
        return next(line.quick_answers for line in cfg.lines if line.id == line_id)

    assert await quick("support") == ["Thank you for waiting!\nLet me check.", "Could you send me your order number, please?"]
    # Emptying a box drops that answer; a duplicate is refused with the key and nothing changes.
    await support.get_by_test_id("qa-answer").first.fill("")
    await support.get_by_test_id("qa-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")
    assert await quick("support") == ["Could you send me your order number, please?"]
    await support.get_by_test_id("qa-new").fill("Could you send me your order number, please?")
    await support.get_by_test_id("qa-save").click()
    await expect(support.get_by_test_id("config-error")).to_contain_text("listed twice")
    assert await quick("support") == ["Could you send me your order number, please?"]

    # Not her line: refused, and the sales line keeps its answers.
    csrf = await page.locator('input[name="csrf_token"]').first.input_value()
    version = await page.locator('input[name="version"]').first.input_value()
    answer = await page.request.post(
        f"{desk_url(desk)}/quick-answers/sales", form={"csrf_token": csrf, "version": version, "answer": "Buy now!"}
    )
    assert answer.status == 403 and "lines whose queue lists them" in await answer.text()
    assert await quick("sales") == []
    await page.context.close()


async def test_an_admin_edits_a_line_as_a_form_with_hours_grid_preview_and_doctor_and_adds_a_line(
    nc: Any, browser: Any, desk: Service[Any]
) -> None:
    expect = playwright_api.expect
    errors: list[str] = []
    page = await new_page(browser, desk_url(desk), errors, width=1360, height=900)
    await submit_login(page, "ada")
    await page.locator('[data-testid="lf-edit"][data-line="support"]').click()
    await expect(page.get_by_test_id("lf-id")).to_have_text("support")
    await expect(page.get_by_test_id("lf-name")).to_have_value("Customer support")

    # Auto-reply texts show what a client would read, as they are typed.
    welcome = page.get_by_test_id("lf-auto_replies-welcome")
    await welcome.fill("Hello {client_name}, welcome to {line_name}!")
    await expect(page.get_by_test_id("lf-auto_replies-welcome-preview")).to_have_text(
        "Maria reads: Hello Maria, welcome to Customer support!"
    )
    # Business hours as a weekly grid, days off and holidays.
    await page.get_by_test_id("lf-hours-enabled").check()
    await page.get_by_test_id("lf-hours-timezone").select_option("Europe/Riga")
    await page.get_by_test_id("lf-weekly-mon").fill("09:00-13:00, 14:00-18:00")
    await page.get_by_test_id("lf-weekly-tue").fill("09:00-18:00")
    await page.get_by_test_id("lf-dayoff-sun").check()
    await page.get_by_test_id("lf-hours-holidays").fill("12-31\n2027-01-01")
    # Carl lacks the open-lines permission: the same refusal as a file gets, with the field marked.
    await page.get_by_test_id("lf-queue-carl").check()
    await page.get_by_test_id("lf-save").click()
    await expect(page.get_by_test_id("config-error").first).to_contain_text("carl")
    await expect(page.get_by_test_id("lf-weekly-mon")).to_have_value("09:00-13:00, 14:00-18:00")  # kept as typed
    await page.get_by_test_id("lf-queue-carl").uncheck()
    # A short no-answer time is valid but the doctor warns: seen before it goes live.
    await page.get_by_test_id("lf-queue-wait_seconds").fill("5")
    await page.get_by_test_id("lf-save").click()
    await expect(page.locator('[data-testid="finding"][data-code="queue-wait-seconds"]')).to_be_visible()
    await expect(page.get_by_test_id("lf-save")).to_have_text("Save anyway")
    await page.get_by_test_id("lf-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")

    cfg = await live(await bus.Buckets(nc.jetstream()).open())
    support = next(line for line in cfg.lines if line.id == "support")
    assert support.queue.wait_seconds == 5 and support.queue.operators == ["anna", "boris"]
    assert support.hours.enabled and support.hours.timezone == "Europe/Riga"
    assert support.hours.weekly == {"mon": ["09:00-13:00", "14:00-18:00"], "tue": ["09:00-18:00"]}
    assert support.hours.days_off == ["sun"] and support.hours.holidays == ["12-31", "2027-01-01"]
    assert support.auto_replies.welcome == "Hello {client_name}, welcome to {line_name}!"
    assert support.session.rating is True  # untouched settings stay as they were
    # The TOML editor shows the same configuration.
    await page.get_by_test_id("lf-toml-link").click()
    await expect(page.get_by_test_id("lines-toml")).to_contain_text("wait_seconds = 5")

    # A new line from the form.
    await page.get_by_test_id("lf-new").click()
    await page.get_by_test_id("lf-id").fill("billing")
    await page.get_by_test_id("lf-name").fill("Billing")
    await page.get_by_test_id("lf-channel-kind").last.select_option("webchat")
    await page.get_by_test_id("lf-channel-account").last.fill("billing")
    await page.get_by_test_id("lf-queue-boris").check()
    await page.get_by_test_id("lf-save").click()
    # A new line with the defaults brings doctor findings (no welcome text, ...): shown first.
    await expect(page.get_by_test_id("confirm-note")).to_be_visible()
    await page.get_by_test_id("lf-save").click()
    await expect(page.get_by_test_id("admin-message")).to_have_text("Saved.")
    cfg = await live(await bus.Buckets(nc.jetstream()).open())
    billing = next(line for line in cfg.lines if line.id == "billing")
    assert [(c.channel, c.account) for c in billing.channels] == [("webchat", "billing")]
    assert billing.queue.operators == ["boris"]
    assert errors == []
    await page.context.close()


async def test_the_line_form_refuses_a_save_over_a_change_made_meanwhile(nc: Any, browser: Any, desk: Service[Any]) -> None:
    expect = playwright_api.expect
    page = await new_page(browser, desk_url(desk), width=1360, height=900)
    await submit_login(page, "ada")
    await page.goto("/admin/lines/form/sales")
    # Meanwhile someone else changes the configuration (another admin, `openlines lines apply`).
    b = await bus.Buckets(nc.jetstream()).open()
    cfg = await live(b)
    cfg.lines[0].auto_replies.closing = "Bye"
    await apply(b, cfg)
    await page.get_by_test_id("lf-name").fill("Sales team")
    await page.get_by_test_id("lf-save").click()
    await expect(page.get_by_test_id("admin-conflict")).to_contain_text("changed the configuration")
    assert next(line.name for line in (await live(b)).lines if line.id == "sales") == "Sales"
    await page.context.close()
