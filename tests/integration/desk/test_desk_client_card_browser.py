"""The client card in Chromium through the real desk, router and crm-sync (built-in CRM): an operator edits
the client's name, phone and e-mail (a bad phone is refused with the reason), then merges another client
found with the search; the card then shows both clients' conversations and the CRM link kept (decision 024)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import apply_lines, client_record, client_writes, events, running_router
from support.crm import linked, running_crm_sync
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, sign_in_live
from support.timing import wait_for

from desk.http import DESK
from desk.settings import Settings
from openlines.commands import Close, call
from openlines.runner import Service

pytestmark = BROWSER_MARKS
playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml: anna and boris on the webchat line, the built-in CRM
    async with (
        running_router(nats_server.url),
        running_crm_sync(nats_server.url),
        running_desk(nats_server.url, "card-browser-secret-0123-Kq7Zt9Wm3xRv") as svc,
    ):
        yield svc


async def test_an_operator_edits_the_client_in_the_card_and_merges_another_client_into_it(
    nc: Any, desk: Service[Settings]
) -> None:
    errors: list[str] = []
    async with chromium() as browser:
        anna = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(anna, "anna")
        await go_online(anna)
        # An earlier visitor, the same person under another name: talked to and closed.
        await client_writes(nc, "v-old", "1", "Do you ship to Riga?", name="Marta from Riga", email="marta.o@example.com")
        old_chat = anna.get_by_test_id("chat-item").filter(has_text="Marta from Riga")
        await old_chat.click()
        await anna.get_by_test_id("accept").click()
        old_id = await old_chat.get_attribute("data-session-id")
        assert old_id
        await linked(nc, old_id)
        await call(nc, "close", Close(operator_id="anna", session_id=old_id))
        await expect(old_chat).to_have_count(0)

        await client_writes(nc, "v-new", "1", "Hello again, it is about my order", name="Visitor 4821")
        chat = anna.get_by_test_id("chat-item").filter(has_text="Visitor 4821")
        await chat.click()
        await anna.get_by_test_id("accept").click()
        new_id = await chat.get_attribute("data-session-id")
        assert new_id
        await linked(nc, new_id)
        await expect(anna.get_by_test_id("card-name")).to_have_text("Visitor 4821")

        # Edit: a phone that is not one is refused with the reason, and nothing changes.
        await anna.get_by_test_id("card-edit").click()
        await expect(anna.get_by_test_id("card-edit-name")).to_be_focused()
        await anna.get_by_test_id("card-edit-name").fill("Marta Ozola")
        await anna.get_by_test_id("card-edit-phone").fill("2612")
        await anna.get_by_test_id("card-edit-save").click()
        await expect(anna.get_by_test_id("card-edit-error")).to_contain_text("not a phone number")
        rec = await client_record(nc, "v-new")
        assert rec is not None and rec.profile.name == "Visitor 4821" and rec.edited == []
        await anna.get_by_test_id("card-edit-phone").fill("+371 2612 3456")
        await anna.get_by_test_id("card-edit-email").fill("Marta@Example.com")
        await anna.get_by_test_id("card-edit-save").press("Enter")
        await expect(anna.get_by_test_id("card-edit-form")).to_be_hidden()
        await expect(anna.get_by_test_id("card-name")).to_have_text("Marta Ozola")
        await expect(anna.get_by_test_id("card-phone")).to_have_text("+37126123456")
        await expect(anna.get_by_test_id("card-email")).to_have_text("marta@example.com")
        # the transcript says who changed what
        await expect(anna.get_by_test_id("transcript")).to_contain_text("Anna Petrova changed the client's name to Marta Ozola")
        item = anna.locator(f'[data-testid="chat-item"][data-session-id="{new_id}"]')
        await expect(item).to_contain_text("Marta Ozola")  # the chat list follows

        # Merge: find the earlier visitor, pick, confirm.
        await anna.get_by_test_id("card-merge").click()
        await anna.get_by_test_id("card-merge-search").fill("Riga")
        pick = anna.get_by_test_id("card-merge-pick")
        await expect(pick).to_have_count(1)
        await expect(pick).to_contain_text("Marta from Riga")
        await pick.click()
        await expect(anna.get_by_test_id("card-merge-confirm-text")).to_contain_text(
            "Merge Marta from Riga (webchat) into Marta Ozola?"
        )
        await anna.get_by_test_id("card-merge-go").click()
        await expect(anna.get_by_test_id("card-merge-panel")).to_be_hidden()
        await expect(anna.get_by_test_id("transcript")).to_contain_text(
            "Anna Petrova merged Marta from Riga (webchat) into this client"
        )

        await wait_for(lambda: desk.app[DESK].index.ready, what="the desk's index caught up")
        previous = anna.get_by_test_id("card-previous-item")
        await expect(previous).to_have_count(1)  # the earlier visitor's conversation, now this client's
        await expect(previous.locator("a")).to_have_attribute("href", f"/transcript/{old_id}")
        await expect(anna.get_by_test_id("card-crm-merged")).to_contain_text("merged: kept this client's lead")
        await expect(anna.get_by_test_id("card-crm-record")).to_have_count(1)
        # the person's e-mail stays the one Anna set; both chats point at one client
        await expect(anna.get_by_test_id("card-email")).to_have_text("marta@example.com")
        old_rec, new_rec = await client_record(nc, "v-old"), await client_record(nc, "v-new")
        assert old_rec is not None and new_rec is not None
        assert old_rec.client_id == new_rec.client_id and old_rec.merged_ids == new_rec.merged_ids != []
        [merged] = await events(nc, "client_merged")
        assert merged.session_id == new_id and merged.client_id == new_rec.client_id
    assert errors == []


async def test_the_answer_to_an_accept_that_comes_after_the_chat_was_closed_does_not_bring_it_back(
    nc: Any, desk: Service[Settings]
) -> None:
    """The page hears of a close over its socket and of its own accept over HTTP: two connections, either
    may come first. Found on a loaded machine, where the accept's answer came second and the closed chat
    stayed in the operator's list for good. Here the browser holds the accept's answer back until the
    close has been pushed."""
    errors: list[str] = []
    async with chromium() as browser:
        anna = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(anna, "anna")
        await go_online(anna)
        await client_writes(nc, "v-late", "1", "Is the shop open on Sunday?", name="Late Answer")
        chat = anna.get_by_test_id("chat-item").filter(has_text="Late Answer")
        await chat.click()
        sid = await chat.get_attribute("data-session-id")
        assert sid
        held: list[Any] = []

        async def hold_accept(route: Any) -> None:
            held.append((route, await route.fetch()))  # the router has accepted; the page does not know yet

        await anna.route(f"**/api/sessions/{sid}/accept", hold_accept)
        await anna.get_by_test_id("accept").click()
        await wait_for(lambda: bool(held), what="the accept done at the router, its answer held")
        await call(nc, "close", Close(operator_id="anna", session_id=sid))
        await expect(chat).to_have_count(0)  # the socket's word
        route, answer = held[0]
        assert (await answer.json())["session"]["status"] == "answered"
        await route.fulfill(response=answer)
        await expect(anna.get_by_test_id("accept")).to_be_enabled()  # the click's handler has run to its end
        await expect(chat).to_have_count(0)
        assert errors == [], errors
