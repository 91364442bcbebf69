"""Working a chat together, in Chromium through the real desk and router: private notes with @mentions
and a transfer with a comment - colleagues read them, the client never gets them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import apply_lines, client_writes, history, outbound_for, running_router
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, sign_in_live
from support.timing import wait_for

from desk.settings import Settings
from openlines.runner import Service

pytestmark = BROWSER_MARKS
playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml: anna and boris on the webchat line
    async with running_router(nats_server.url), running_desk(nats_server.url, "notes-browser-secret-01-Kq7Zt9Wm3xRv") as svc:
        yield svc


async def test_a_private_note_mentions_a_colleague_and_a_transfer_comment_reaches_them_not_the_client(
    nc: Any, desk: Service[Settings]
) -> None:
    errors: list[str] = []
    async with chromium() as browser:
        anna = await new_page(browser, desk_url(desk), errors)
        await sign_in_live(anna, "anna")
        await go_online(anna)
        await client_writes(nc, "v-carol", "n-1", "My order 42 arrived broken.", name="Carol")
        chat = anna.get_by_test_id("chat-item").filter(has_text="Carol")
        await chat.click()
        await anna.get_by_test_id("accept").click()
        session_id = await chat.get_attribute("data-session-id")
        assert session_id
        box = anna.get_by_test_id("reply-input")
        await expect(box).to_be_enabled()
        boris = await new_page(browser, desk_url(desk), errors)  # signed in after Anna took the chat
        await sign_in_live(boris, "boris")

        # A private note that names Boris.
        await anna.get_by_test_id("note-toggle").click()
        await expect(anna.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "true")
        await box.fill("Second broken order this month, @boris can you check the courier?")
        await box.press("Enter")
        note = anna.get_by_test_id("transcript-note")
        await expect(note).to_contain_text("Second broken order this month")
        await expect(note).to_contain_text("Note · Anna")
        await expect(anna.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "false")  # back to replies
        # Boris is told, though the chat is not his.
        await expect(boris.get_by_test_id("mention")).to_contain_text("mentioned you: Second broken order")
        # He answers in the chat, which is Anna's, from "All my lines": a note is all he may write there.
        await boris.get_by_test_id("view-lines").click()
        await boris.get_by_test_id("view-item").filter(has_text="Carol").click()
        await expect(boris.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "true")
        await expect(boris.get_by_test_id("note-toggle")).to_be_disabled()  # no reply to another's client
        await boris.get_by_test_id("reply-input").fill("Courier checked: the parcel was dropped, @anna")
        await boris.get_by_test_id("reply-input").press("Enter")
        await expect(anna.get_by_test_id("transcript-note").filter(has_text="Courier checked")).to_contain_text("Note · Boris")
        await expect(anna.get_by_test_id("mention")).to_contain_text("mentioned you: Courier checked")

        # Then she hands the chat to the line's queue with a word for whoever takes it.
        await anna.get_by_test_id("transfer").click()
        await anna.get_by_test_id("transfer-target").select_option(label="Customer support (this line)")
        await anna.get_by_test_id("transfer-comment").fill("Wants a refund, photos are in the chat")
        await anna.get_by_test_id("transfer-go").click()

        async def trail() -> list[Any]:
            return [e for e in await history(nc, session_id) if "Wants a refund, photos are in the chat" in e.text]

        [line] = await wait_for(trail, what="the transfer comment in the transcript")
        assert line.direction == "system" and "Anna Petrova transferred the chat to Customer support" in line.text
    # The client got neither.
    sent = " ".join(o.text for o in await outbound_for(nc, "v-carol"))
    assert "Second broken order" not in sent and "Wants a refund" not in sent and "Courier" not in sent
    notes = [e for e in await history(nc, session_id) if e.note]
    assert [(n.author_id, n.mentions, n.direction) for n in notes] == [
        ("anna", ["boris"], "system"),
        ("boris", ["anna"], "system"),
    ]
    assert errors == []


async def test_the_keyboard_moves_between_chats_and_accepts_and_the_transcript_is_split_by_day(
    nc: Any, desk: Service[Settings]
) -> None:
    from datetime import timedelta

    from openlines import subjects
    from openlines.envelopes import MSG_ID_HEADER, HistoryEntry, encode, utcnow

    async with chromium() as browser:
        anna = await new_page(browser, desk_url(desk))
        await sign_in_live(anna, "anna")
        await go_online(anna)
        await client_writes(nc, "v-dora", "k-1", "First question", name="Dora Smith")
        await client_writes(nc, "v-emil", "k-2", "Second question", name="Emil")
        items = anna.get_by_test_id("chat-item")
        await expect(items).to_have_count(2)
        await expect(items.filter(has_text="Dora Smith").get_by_test_id("chat-avatar")).to_have_text("DS")
        await expect(items.filter(has_text="Emil").get_by_test_id("chat-avatar")).to_have_text("E")
        # Each chat shows its last message under it.
        await expect(items.filter(has_text="Dora Smith").get_by_test_id("chat-preview")).to_contain_text("First question")
        await client_writes(nc, "v-emil", "k-3", "Any news?", name="Emil")
        await expect(items.filter(has_text="Emil").get_by_test_id("chat-preview")).to_contain_text("Any news?")
        # Alt+Down opens the first chat, again the next; Alt+Up back; Alt+A accepts the one open.
        await anna.keyboard.press("Alt+ArrowDown")
        first = await anna.locator('[data-testid="chat-item"].selected').get_attribute("data-session-id")
        await anna.keyboard.press("Alt+ArrowDown")
        second = await anna.locator('[data-testid="chat-item"].selected').get_attribute("data-session-id")
        assert first and second and first != second
        await anna.keyboard.press("Alt+ArrowUp")
        await expect(anna.locator('[data-testid="chat-item"].selected')).to_have_attribute("data-session-id", first)
        await expect(anna.get_by_test_id("accept")).to_be_visible()
        await anna.keyboard.press("Alt+A")
        await expect(anna.get_by_test_id("accept")).to_be_hidden()
        await expect(anna.get_by_test_id("reply-input")).to_be_enabled()
        # Alt+N: a private note instead of a reply.
        await anna.keyboard.press("Alt+N")
        await expect(anna.get_by_test_id("note-toggle")).to_have_attribute("aria-pressed", "true")
        # An entry written yesterday (e.g. the chat came back): the transcript says which day is which.
        yesterday = utcnow() - timedelta(days=1)
        old = HistoryEntry(id=f"old:{first}", session_id=first, direction="system", text="Left a voicemail", at=yesterday)
        await nc.jetstream().publish(subjects.history(first), encode(old), headers={MSG_ID_HEADER: old.id})
        await anna.reload()
        await expect(anna.get_by_test_id("connection")).to_have_attribute("data-state", "live")
        # After a reload the previews come from the desk's index.
        await expect(anna.get_by_test_id("chat-item").filter(has_text="Emil").get_by_test_id("chat-preview")).to_contain_text(
            "Any news?"
        )
        await anna.locator(f'[data-testid="chat-item"][data-session-id="{first}"]').click()
        days = anna.get_by_test_id("day-separator")
        await expect(days).to_have_text(["Yesterday", "Today"])
