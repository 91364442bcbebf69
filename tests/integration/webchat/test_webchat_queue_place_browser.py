"""A waiting visitor sees their place in the queue in the widget, live, through the real router and
gateway in Chromium: it moves up as chats ahead are answered, survives a reload, and goes when an
operator takes the chat; a line that does not tell places shows none."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import apply_lines, inbound, publish, session_of
from support.timing import wait_for
from support.webchat import widget_in_chromium

from openlines.commands import Close, SetStatus, call
from openlines.state import Session

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"chromium is not installed at {CHROMIUM}"),
]


def lines(tell: bool) -> str:
    return f"""
[operators.anna]
name = "Anna"

[[lines]]
id = "site"
name = "Website"
channels = [{{ channel = "webchat", account = "demo" }}]
[lines.queue]
operators = ["anna"]
max_chats_per_operator = 1
tell_position = {"true" if tell else "false"}
[lines.auto_replies]
queue_position = "You are number {{position}}."
"""


async def with_status(nc: Any, visitor: str, status: str) -> Session:
    async def probe() -> Session | None:
        s = await session_of(nc, visitor, line="site")
        return s if s is not None and s.status == status else None

    return await wait_for(probe, what=f"{visitor}'s chat {status}")


@pytest.fixture
async def page(nats_server: Any, nc: Any, request: Any) -> AsyncIterator[Any]:
    """The lines (telling places or not: the parameter), the router and the webchat gateway running,
    the demo page open in Chromium at a phone's width."""
    await apply_lines(nc, lines(tell=request.param))
    async with widget_in_chromium(nats_server.url, width=390, height=780) as (pg, _):
        yield pg


async def queue_behind_two(nc: Any, page: Any) -> tuple[Session, Session, Session]:
    """Anna (one chat at a time) answers v-first, v-second waits, then the browser's visitor writes."""
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    await publish(nc, inbound("v-first", "first", "m1"))
    first = await with_status(nc, "v-first", "assigned")
    await publish(nc, inbound("v-second", "second", "m1"))
    second = await with_status(nc, "v-second", "waiting")
    await page.evaluate("window.openlinesWidget.open(); window.openlinesWidget.send('Where is my parcel?')")
    visitor = await page.evaluate("window.openlinesWidget.visitor")
    mine = await with_status(nc, visitor, "waiting")
    return first, second, mine


@pytest.mark.parametrize("page", [True], indirect=True)
async def test_the_widget_shows_the_place_in_the_queue_as_it_moves_and_hides_it_when_answered(page: Any, nc: Any) -> None:
    from playwright.async_api import expect

    first, second, mine = await queue_behind_two(nc, page)
    w = page.get_by_test_id("ol-widget")
    place = w.get_by_test_id("ol-queue")
    await expect(place).to_have_text("You are number 2 in the queue. Thank you for waiting.")
    assert await place.get_attribute("role") == "status"  # read out by screen readers as it changes

    await call(nc, "close", Close(operator_id="anna", session_id=first.id))  # v-second goes to Anna: one ahead less
    await expect(place).to_have_text("You are number 1 in the queue. Thank you for waiting.")
    await page.reload()  # a reconnecting visitor is told where they were
    await page.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    await page.evaluate("window.openlinesWidget.open()")
    await expect(place).to_have_text("You are number 1 in the queue. Thank you for waiting.")

    await with_status(nc, "v-second", "assigned")
    await call(nc, "close", Close(operator_id="anna", session_id=second.id))  # now it is the visitor's turn
    taken = await with_status(nc, await page.evaluate("window.openlinesWidget.visitor"), "assigned")
    assert taken.id == mine.id and taken.operator_id == "anna"
    await expect(place).to_be_hidden()
    assert await w.get_attribute("data-queue-place") == "0"


@pytest.mark.parametrize("page", [False], indirect=True)
async def test_a_line_that_does_not_tell_places_shows_none(page: Any, nc: Any) -> None:
    from playwright.async_api import expect

    first, _, _ = await queue_behind_two(nc, page)
    await call(nc, "close", Close(operator_id="anna", session_id=first.id))  # the queue moves: still nothing told
    await with_status(nc, "v-second", "assigned")
    w = page.get_by_test_id("ol-widget")
    await expect(w.get_by_test_id("ol-queue")).to_be_hidden()
    assert await w.get_attribute("data-queue-place") is None
