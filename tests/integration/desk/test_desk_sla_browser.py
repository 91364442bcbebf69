"""SLA in headless Chromium through the real router and desk: the operator's chat list counts the
first-response target down, then shows it overdue; the line's supervisor gets the alert live;
an answer stops the clock."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support import client_writes
from support.desk import BROWSER_MARKS, chromium, desk_with_router, go_online, new_page, sign_in_live

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"
TARGET = 10  # seconds: the page shows the clock running before it passes
WAIT = 30_000  # ms: from the target passing to the alert, on a loaded machine


def lines() -> str:
    """The example lines with boris first in a strict queue, anna (a supervisor) second, and an SLA."""
    text = (ROOT / "deploy/lines.example.toml").read_text()
    text = text.replace('mode = "round_robin"', 'mode = "strict"', 1)
    text = text.replace('operators = ["anna", "boris"]', 'operators = ["boris", "anna"]', 1)
    text = text.replace("wait_seconds = 45", "wait_seconds = 600", 1)
    return text + f"\n[lines.sla]\nfirst_response_seconds = {TARGET}\nnext_response_seconds = {TARGET}\n"


async def test_operator_sees_the_clock_and_the_supervisor_gets_the_alert(nc: Any, nats_server: Any) -> None:
    support = lines()
    assert "[lines.sla]" in support and '"boris", "anna"' in support
    async with desk_with_router(nc, nats_server.url, lines=support) as desk, chromium() as browser:
        base = f"http://127.0.0.1:{desk.port}"
        errors: list[str] = []
        boris = await new_page(browser, base, errors)
        anna = await new_page(browser, base, errors)
        await sign_in_live(boris, "boris")
        await go_online(boris)
        await sign_in_live(anna, "anna")
        await go_online(anna)

        await client_writes(nc, "maria", "m1", "Where is my order?", name="Maria Client")
        item = boris.get_by_test_id("chat-item")
        await expect(item).to_have_count(1)
        clock = item.get_by_test_id("sla-clock")
        await expect(clock).to_have_text(re.compile(r"^first response in \d+:\d\d$"))
        await expect(clock).to_have_text(re.compile(r"^first response overdue \d+:\d\d$"), timeout=WAIT)
        await expect(clock).to_have_class(re.compile(r"\boverdue\b"))

        alert = anna.get_by_test_id("sla-alert")
        await expect(alert).to_have_count(1, timeout=WAIT)
        await expect(alert).to_contain_text("SLA: Maria Client on Customer support · Boris Ivanov")
        await expect(alert).to_contain_text(f"first response target {TARGET} s passed by")
        await expect(boris.get_by_test_id("sla-alert")).to_have_count(0)  # an operator, not a supervisor of the line
        ARTIFACTS.mkdir(exist_ok=True)
        await boris.screenshot(path=str(ARTIFACTS / "desk-sla-clock.png"))
        await anna.screenshot(path=str(ARTIFACTS / "desk-sla-alert.png"))

        # the supervisor view marks the chat too
        supervisor = await new_page(browser, base, errors)
        await supervisor.context.add_cookies(await anna.context.cookies())
        await supervisor.goto("/supervisor")
        await expect(supervisor.get_by_test_id("sup-sla")).to_have_text("SLA: first response overdue", timeout=WAIT)
        await supervisor.close()

        # boris answers: the clock stops and leaves his list
        await item.click()
        await boris.get_by_test_id("accept").click()
        await boris.get_by_test_id("reply-input").fill("Let me check that for you.")
        await boris.get_by_test_id("reply-send").click()
        await expect(item.get_by_test_id("sla-clock")).to_have_count(0, timeout=WAIT)

        # the client writes again: the next-response clock runs, and survives a reload
        await client_writes(nc, "maria", "m2", "Any news?", name="Maria Client")
        await expect(item.get_by_test_id("sla-clock")).to_have_text(re.compile(r"^next response in \d+:\d\d$"), timeout=WAIT)
        await boris.reload()
        await expect(boris.get_by_test_id("chat-item").get_by_test_id("sla-clock")).to_have_text(
            re.compile(r"^next response (in|overdue) \d+:\d\d$"), timeout=WAIT
        )
        assert errors == []
