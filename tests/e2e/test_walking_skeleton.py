"""End to end: a website visitor and an operator chat live through every service.

The webchat gateway, the router and the desk run for real (in-process, over
real sockets) against a real nats-server; the visitor and the operator are
real Chromium pages or real WebSocket / HTTP clients.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import apply_lines, history
from support import webchat as webchat_support
from support.servers import creds
from support.timing import scaled, wait_for

from openlines import bus
from openlines.commands import SetStatus, call
from openlines.runner import Service, launch
from openlines.state import OperatorState, Session

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@dataclass
class Stack:
    webchat: Service[Any]
    router: Service[Any]
    desk: Service[Any]

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.webchat.port}"

    @property
    def desk_url(self) -> str:
        return f"http://127.0.0.1:{self.desk.port}"


@pytest.fixture
async def stack(nc: Any, nats_server: Any) -> AsyncIterator[Stack]:
    from desk.app import setup as desk_setup
    from desk.settings import Settings as DeskSettings
    from gateway_webchat import Settings as WebchatSettings
    from gateway_webchat import setup as webchat_setup
    from router.app import setup as router_setup
    from router.settings import Settings as RouterSettings

    await apply_lines(nc)
    url = nats_server.url
    router = await launch(
        "router",
        RouterSettings(
            nats_url=url,
            http_port=0,
            **creds("router"),
        ),
        router_setup,
        first_attempts=5,
    )
    webchat = await launch(
        "gateway-webchat",
        WebchatSettings(
            nats_url=url,
            http_port=0,
            webchat_secret="e2e-webchat-secret-0123456789-Kq7Zt9Wm3xRv",
            shutdown_timeout=3.0,
            **creds("gateway-webchat"),
        ),
        webchat_setup,
        first_attempts=5,
    )
    desk = await launch(
        "desk",
        DeskSettings(
            nats_url=url,
            http_port=0,
            cookie_secret="e2e-cookie-secret-0123456789-Kq7Zt9Wm3xRv",
            **creds("desk"),
        ),
        desk_setup,
        first_attempts=5,
    )
    yield Stack(webchat=webchat, router=router, desk=desk)
    for svc in (desk, webchat, router):
        await svc.stop()


async def operator_session(nc: Any, operator: str) -> Session | None:
    b = await bus.Buckets(nc.jetstream()).open()
    st, _ = await bus.kv_get(b.operators, operator, OperatorState)
    if st is None or not st.sessions:
        return None
    s, _ = await bus.kv_get(b.sessions, st.sessions[-1], Session)
    return s


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)")
async def test_visitor_writes_on_the_demo_page_operator_answers_in_the_desk(stack: Stack) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        visitor = await (await browser.new_context()).new_page()
        operator = await (await browser.new_context(base_url=stack.desk_url, viewport={"width": 1280, "height": 760})).new_page()
        page_errors: list[str] = []
        for pg in (visitor, operator):
            pg.on("pageerror", lambda exc: page_errors.append(str(exc)))

        # The operator signs in and goes online.
        await operator.goto("/login")
        await operator.get_by_test_id("login-user").fill("anna")
        await operator.get_by_test_id("login-password").fill("demo")
        await operator.get_by_test_id("login-submit").click()
        await expect(operator.get_by_test_id("connection")).to_have_attribute("data-state", "live")
        await operator.get_by_test_id("status-online").click()
        await expect(operator.get_by_test_id("status-online")).to_have_attribute("aria-pressed", "true")

        # A visitor opens the shop's page and writes in the widget.
        await visitor.goto(f"{stack.web}/demo")
        await visitor.get_by_test_id("ol-launcher").click()
        await visitor.get_by_test_id("ol-name").fill("Ilze")
        await visitor.get_by_test_id("ol-input").fill("Do you deliver to Riga?")
        await visitor.get_by_test_id("ol-send").click()
        mine = visitor.get_by_test_id("ol-msg-out").filter(has_text="Do you deliver to Riga?")
        await expect(mine).to_have_attribute("data-status", "sent")
        # The line's welcome auto-reply arrives at once.
        await expect(visitor.get_by_test_id("ol-msg-in").filter(has_text="Hello Ilze!")).to_be_visible()

        # The operator gets the chat live, reads it and answers.
        item = operator.locator('[data-testid="chat-item"]').filter(has_text="Ilze")
        await expect(item).to_be_visible()
        await item.click()
        await expect(operator.get_by_test_id("transcript")).to_contain_text("Do you deliver to Riga?")
        await operator.get_by_test_id("reply-input").fill("Yes, in two days.")
        await operator.get_by_test_id("reply-input").press("Enter")

        # The visitor sees the operator's reply.
        reply = visitor.get_by_test_id("ol-msg-in").filter(has_text="Yes, in two days.")
        await expect(reply).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        await visitor.screenshot(path=str(ARTIFACTS / "e2e-visitor.png"))
        await operator.screenshot(path=str(ARTIFACTS / "e2e-operator.png"))

        # And a second message of the visitor continues the same chat.
        await visitor.get_by_test_id("ol-input").fill("Great, thanks!")
        await visitor.get_by_test_id("ol-input").press("Enter")
        await expect(operator.get_by_test_id("transcript")).to_contain_text("Great, thanks!")
        await browser.close()
        assert page_errors == []


async def open_visitor(http: aiohttp.ClientSession, stack: Stack, token: str = "") -> tuple[Any, dict[str, Any]]:
    return await webchat_support.open_visitor(http, stack.web, token=token)


async def send(ws: Any, msg_id: str, text: str) -> dict[str, Any]:
    await ws.send_json({"type": "message", "id": msg_id, "text": text})
    while True:
        frame = json.loads((await ws.receive(timeout=scaled(15))).data)
        if frame.get("id") == msg_id and frame["type"] in ("ack", "error"):
            return frame  # type: ignore[no-any-return]


async def test_a_resent_message_after_reconnect_reaches_the_operator_once(stack: Stack, nc: Any) -> None:
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    async with aiohttp.ClientSession() as http:
        ws, welcome = await open_visitor(http, stack)
        first = await send(ws, "c-1", "Is this in stock?")
        assert (first["status"], first["duplicate"]) == ("sent", False)
        await ws.close()
        # The widget did not see the ack (say), reconnects with its token and sends again.
        ws, again = await open_visitor(http, stack, welcome["token"])
        assert again["visitor"] == welcome["visitor"]
        second = await send(ws, "c-1", "Is this in stock?")
        assert (second["status"], second["duplicate"]) == ("sent", True)
        marker = await send(ws, "c-2", "marker")
        assert marker["status"] == "sent"
        await ws.close()

    session = await wait_for(lambda: operator_session(nc, "anna"), what="chat given to anna")

    async def marker_seen() -> list[Any] | None:
        entries = [h for h in await history(nc, session.id) if h.direction == "in"]
        return entries if any(h.text == "marker" for h in entries) else None

    entries = await wait_for(marker_seen, what="marker in the transcript")
    assert [h.text for h in entries] == ["Is this in stock?", "marker"]


async def test_nats_down_visitor_gets_an_error_and_the_retry_reaches_the_operator_once(
    stack: Stack, nc: Any, nats_server: Any
) -> None:
    await call(nc, "status", SetStatus(operator_id="anna", status="online"))
    async with aiohttp.ClientSession() as http:
        ws, _ = await open_visitor(http, stack)
        assert (await send(ws, "n-1", "before the outage"))["status"] == "sent"
        nats_server.stop()
        failed = await send(ws, "n-2", "during the outage")
        assert (failed["type"], failed["code"]) == ("error", "unavailable")
        nats_server.start()
        await wait_for(lambda: stack.webchat.nc.is_connected and stack.router.nc.is_connected, what="services reconnected")

        async def retry() -> dict[str, Any] | None:
            frame = await send(ws, "n-2", "during the outage")
            return frame if frame["type"] == "ack" else None

        ack = await wait_for(retry, timeout=20, interval=0.3, what="retry accepted")
        assert ack["status"] == "sent"
        await ws.close()

    session = await wait_for(lambda: operator_session(nc, "anna"), what="chat given to anna")

    async def both_seen() -> list[str] | None:
        texts = [h.text for h in await history(nc, session.id) if h.direction == "in"]
        return texts if "during the outage" in texts else None

    texts = await wait_for(both_seen, timeout=20, what="retried message in the transcript")
    assert texts == ["before the outage", "during the outage"]


async def test_desk_page_and_demo_page_are_served_by_the_running_stack(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.web}/demo") as r:
            html = await r.text()
            assert r.status == 200
            assert re.search(r'<script[^>]+src="[^"]*/widget\.js"[^>]+data-account="demo"', html)
        async with http.get(f"{stack.desk_url}/login") as r:
            assert r.status == 200
        for svc in (stack.webchat, stack.router, stack.desk):
            async with http.get(f"http://127.0.0.1:{svc.port}/readyz") as r:
                assert r.status == 200, await r.text()
