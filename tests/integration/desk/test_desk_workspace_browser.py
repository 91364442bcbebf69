"""The operator workspace end to end in headless Chromium: a visitor on the real webchat widget,
two operators in two browser contexts, the real router, gateway and desk over a real nats-server.

Offer (sound, flashing title, countdown) → accept → quick answer → file → transfer to another
operator → that operator accepts and closes; the visitor's widget shows every reply and the file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from support import running_router
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, sign_in_live
from support.servers import creds
from support.timing import wait_for

from desk.settings import Settings
from gateway_webchat import Settings as WebchatSettings
from gateway_webchat import setup as webchat_setup
from gateway_webchat.service import WEBCHAT
from openlines import bus, subjects
from openlines.apply import apply
from openlines.envelopes import Outbound
from openlines.lines import LineConfig, LinesFile, QueueConfig, load
from openlines.runner import Service, launch
from openlines.state import Session

pytestmark = BROWSER_MARKS

playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

ROOT = Path(__file__).resolve().parents[3]
WAIT = 300
QUICK = ["Thank you for waiting! Let me check that for you.", "Could you send me your order number, please?"]
# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b2f1"
    "a30000000049454e44ae426082"
)


def lines_config() -> LinesFile:
    """The example configuration, with quick answers on support and a second line to transfer to."""
    cfg = load(ROOT / "deploy/lines.example.toml")
    # A long no-answer timeout: a slow test machine must not see the router pass an offer on.
    queue = msgspec.structs.replace(cfg.lines[0].queue, wait_seconds=WAIT)
    support = msgspec.structs.replace(cfg.lines[0], quick_answers=QUICK, queue=queue)
    sales = LineConfig(id="sales", name="Sales", queue=QueueConfig(operators=["anna", "boris"]))
    return msgspec.structs.replace(cfg, lines=[support, sales])


class Stack:
    def __init__(self, desk: Service[Settings], webchat: Service[WebchatSettings]) -> None:
        self.desk = desk
        self.webchat = webchat

    @property
    def desk_url(self) -> str:
        return desk_url(self.desk)


@pytest.fixture
async def stack(nc: Any, nats_server: Any) -> AsyncIterator[Stack]:
    await apply(await bus.Buckets(nc.jetstream()).open(), lines_config())
    async with running_router(nats_server.url), running_desk(nats_server.url, "workspace-test-secret-0123-Kq7Zt9Wm3xRv") as desk:
        webchat = await launch(
            "gateway-webchat",
            WebchatSettings(
                nats_url=nats_server.url,
                http_port=0,
                webchat_secret="workspace-widget-secret-0123-Kq7Zt9Wm3xRv",
                shutdown_timeout=3.0,
                **creds("gateway-webchat"),
            ),
            webchat_setup,
            first_attempts=5,
        )
        await wait_for(lambda: webchat.app[WEBCHAT].consumer.ready() is None, what="webchat outbound consumer")
        yield Stack(desk, webchat)
        await webchat.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium("--autoplay-policy=no-user-gesture-required") as b:
        yield b


async def sign_in(page: Any, login: str) -> None:
    await sign_in_live(page, login)
    await go_online(page)


async def outbound_of(js: Any, visitor: str) -> list[Outbound]:
    subject = subjects.outbound("webchat", "demo", subjects.chat_key("webchat", "demo", visitor))
    return [msgspec.json.decode(d, type=Outbound) for _, d in await bus.read_subject(js, subjects.STREAM_OUT, subject)]


async def test_offer_accept_quick_answer_file_transfer_and_close_across_two_operators(
    stack: Stack, nc: Any, browser: Any
) -> None:
    js = nc.jetstream()
    errors: list[str] = []

    # The visitor opens the widget on the gateway's demo page.
    visitor = await new_page(browser, f"http://127.0.0.1:{stack.webchat.port}", errors)
    await visitor.goto("/demo")
    await visitor.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    visitor_id = await visitor.evaluate("window.openlinesWidget.visitor")

    # Operator A (Anna) is the only one online: the chat is offered to her.
    anna = await new_page(browser, stack.desk_url, errors)
    await sign_in(anna, "anna")
    await visitor.get_by_test_id("ol-launcher").click()
    await visitor.get_by_test_id("ol-name").fill("Maria")
    await visitor.get_by_test_id("ol-input").fill("Hello, my parcel is late")
    await visitor.get_by_test_id("ol-send").click()

    # The offer: a toast, a sound, a flashing title, and accept + skip with the line's countdown.
    await expect(anna.get_by_test_id("new-chat-toast")).to_contain_text("New chat: Maria")
    await expect(anna.get_by_test_id("new-chat-toast")).to_have_class(re.compile(r"\bflash\b"))
    await expect(anna.locator("body")).to_have_attribute("data-beeps", "1")
    await expect(anna.locator("body")).to_have_attribute("data-sound-state", "running")
    await expect(anna.locator("body")).to_have_class(re.compile(r"\boffer-alert\b"))
    await expect(anna).to_have_title("● New chat: Maria")
    item = anna.get_by_test_id("chat-item").filter(has_text="Maria")
    sid = await item.get_attribute("data-session-id")
    assert sid
    await item.click()
    await expect(anna.get_by_test_id("accept")).to_be_visible()
    await expect(anna.get_by_test_id("skip")).to_be_visible()
    countdown = anna.get_by_test_id("offer-countdown")
    await expect(countdown).to_have_text(re.compile(r"^answer within \d+ s$"))
    assert 0 < int((await countdown.inner_text()).split()[2]) <= WAIT
    await expect(anna).to_have_title("openlines desk")  # the flashing stops once the chat is opened

    await anna.get_by_test_id("accept").click()
    await expect(anna.get_by_test_id("skip")).to_be_hidden()
    await expect(anna.get_by_test_id("offer-countdown")).to_be_hidden()

    # A quick answer of the line goes into the reply box, and out.
    await anna.get_by_test_id("quick-answers").select_option(label=QUICK[0])
    await expect(anna.get_by_test_id("reply-input")).to_have_value(QUICK[0])
    await anna.get_by_test_id("reply-send").click()
    await expect(visitor.get_by_test_id("ol-msg-in").filter(has_text=QUICK[0])).to_contain_text("Anna Petrova")

    # A file: uploaded through the desk, then sent with a caption.
    await anna.get_by_test_id("attach-input").set_input_files({"name": "label.png", "mimeType": "image/png", "buffer": PNG})
    await expect(anna.get_by_test_id("attachment-chip")).to_have_attribute("data-ready", "true")
    await anna.get_by_test_id("reply-input").fill("Here is your shipping label.")
    await anna.get_by_test_id("reply-input").press("Enter")
    await expect(anna.get_by_test_id("attachment-chip")).to_have_count(0)
    await expect(anna.get_by_test_id("entry-attachment")).to_have_count(1)
    mine = anna.get_by_test_id("transcript-entry").filter(has_text="Here is your shipping label.")
    await expect(mine.get_by_test_id("entry-attachment")).to_have_count(1)
    await expect(mine.get_by_test_id("attachment-image")).to_have_js_property("naturalWidth", 1)  # loaded through the desk
    shown = visitor.get_by_test_id("ol-attachment")
    await expect(shown).to_have_count(1)
    url = await shown.get_attribute("href")
    # The widget's link is the webchat gateway's, signed for this visitor - never the desk's address.
    assert url and url.startswith(f"http://127.0.0.1:{stack.webchat.port}/files/") and stack.desk_url not in url
    async with aiohttp.ClientSession() as http, http.get(url) as got:
        assert got.status == 200 and got.headers["Content-Type"] == "image/png"
        assert await got.read() == PNG
    await expect(visitor.get_by_test_id("ol-msg-in").filter(has_text="Here is your shipping label.")).to_be_visible()
    captioned = visitor.get_by_test_id("ol-msg-in").filter(has_text="Here is your shipping label.")
    await expect(captioned.get_by_test_id("ol-attachment")).to_have_count(1)  # the file in the caption's bubble

    # Pin, so it would stay hers if she went away.
    await anna.get_by_test_id("pin").click()
    await expect(anna.get_by_test_id("pin")).to_have_attribute("aria-pressed", "true")
    await expect(item.get_by_test_id("chat-pinned")).to_be_visible()

    # Operator B (Boris) comes online in his own browser context.
    boris = await new_page(browser, stack.desk_url, errors)
    await sign_in(boris, "boris")

    # Anna transfers the chat to Boris with the picker.
    await anna.get_by_test_id("transfer").click()
    await expect(anna.get_by_test_id("transfer-panel")).to_be_visible()
    await expect(anna.get_by_test_id("transfer-target").locator("option")).to_have_text(
        ["Boris Ivanov (online)", "Customer support (this line)", "Sales"]
    )
    await anna.get_by_test_id("transfer-target").select_option("op:boris")
    await anna.get_by_test_id("transfer-go").click()
    await expect(anna.locator(f'[data-testid="chat-item"][data-session-id="{sid}"]')).to_have_count(0)
    await expect(anna.get_by_test_id("placeholder")).to_have_text("Transferred to Boris Ivanov (online).")

    # Boris gets it as an offer, with the transcript so far, accepts, answers and closes.
    await expect(boris.get_by_test_id("new-chat-toast")).to_contain_text("New chat: Maria")
    await expect(boris.locator("body")).to_have_attribute("data-beeps", "1")
    offered = boris.locator(f'[data-testid="chat-item"][data-session-id="{sid}"]')
    await offered.click()
    await expect(boris.get_by_test_id("transcript")).to_contain_text("Anna Petrova transferred the chat to Boris Ivanov")
    await expect(boris.get_by_test_id("transcript")).to_contain_text(QUICK[0])
    await expect(boris.get_by_test_id("offer-countdown")).to_have_text(re.compile(r"^answer within \d+ s$"))
    await boris.get_by_test_id("accept").click()
    await boris.get_by_test_id("reply-input").fill("Boris here: your parcel arrives tomorrow.")
    await boris.get_by_test_id("reply-input").press("Enter")
    await expect(visitor.get_by_test_id("ol-msg-in").filter(has_text="Boris here")).to_contain_text("Boris Ivanov")
    await boris.get_by_test_id("close").click()
    await boris.get_by_test_id("close-confirm").click()
    await expect(offered).to_have_count(0)
    await expect(visitor.get_by_test_id("ol-msg-in").filter(has_text="The conversation is closed.")).to_be_visible()

    session, _ = await bus.kv_get((await bus.Buckets(js).open()).sessions, sid, Session)
    assert session is not None and session.status == "closed" and session.closed_by == "boris"
    outs = await outbound_of(js, visitor_id)
    by = [(o.operator_id, o.text, [a.name for a in o.attachments]) for o in outs if not o.auto]
    assert by == [
        ("anna", QUICK[0], []),
        ("anna", "Here is your shipping label.", ["label.png"]),  # the caption and its file are one message
        ("boris", "Boris here: your parcel arrives tomorrow.", []),
    ]
    assert errors == [], f"JavaScript errors on the pages: {errors}"


async def test_skip_passes_the_offer_on_and_the_operator_sees_it_go(stack: Stack, nc: Any, browser: Any) -> None:
    js = nc.jetstream()
    errors: list[str] = []
    visitor = await new_page(browser, f"http://127.0.0.1:{stack.webchat.port}", errors)
    await visitor.goto("/demo")
    await visitor.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
    anna = await new_page(browser, stack.desk_url, errors)
    await sign_in(anna, "anna")
    boris = await new_page(browser, stack.desk_url, errors)
    await sign_in(boris, "boris")

    await visitor.get_by_test_id("ol-launcher").click()
    await visitor.get_by_test_id("ol-input").fill("Anyone there?")
    await visitor.get_by_test_id("ol-send").click()

    # Round robin offers it to one of them; whoever got it skips, and it goes to the other.
    buckets = await bus.Buckets(js).open()

    async def offered() -> Session | None:
        for sid in await buckets.sessions.keys():
            s, _ = await bus.kv_get(buckets.sessions, sid, Session)
            if s is not None and s.status == "assigned" and s.operator_id:
                return s
        return None

    first = await wait_for(offered, what="the chat offered to an operator")
    holder, other = (anna, boris) if first.operator_id == "anna" else (boris, anna)
    item = holder.locator(f'[data-testid="chat-item"][data-session-id="{first.id}"]')
    await item.click()
    await holder.get_by_test_id("skip").click()
    await expect(item).to_have_count(0)
    await expect(holder.get_by_test_id("placeholder")).to_contain_text("You skipped the chat")
    await expect(other.locator(f'[data-testid="chat-item"][data-session-id="{first.id}"]')).to_be_visible()
    session, _ = await bus.kv_get(buckets.sessions, first.id, Session)
    assert session is not None and session.operator_id != first.operator_id and first.operator_id in session.declined_by
    assert errors == []
