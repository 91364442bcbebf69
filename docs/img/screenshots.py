"""Takes the screenshots of docs/operators.md with headless Chromium.

    .venv/bin/python docs/img/screenshots.py

Starts a throw-away nats-server, the router, the desk and the webchat gateway
in this process, plays a short conversation (a visitor on the widget, Anna and
Boris in the desk) and saves PNGs next to this file.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import msgspec
from playwright.async_api import async_playwright, expect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.desk import CHROMIUM, sign_in_live, submit_login  # noqa: E402
from support.servers import (  # noqa: E402
    ADMIN_ENV,
    NatsServer,
    creds,
)
from support.timing import wait_for  # noqa: E402

from desk.app import setup as desk_setup  # noqa: E402
from desk.settings import Settings as DeskSettings  # noqa: E402
from gateway_webchat import Settings as WebchatSettings  # noqa: E402
from gateway_webchat import setup as webchat_setup  # noqa: E402
from gateway_webchat.service import WEBCHAT  # noqa: E402
from openlines import bus, subjects  # noqa: E402
from openlines.apply import apply  # noqa: E402
from openlines.envelopes import MSG_ID_HEADER, ClientProfile, Inbound, encode, utcnow  # noqa: E402
from openlines.lines import LineConfig, QueueConfig, load  # noqa: E402
from openlines.runner import launch  # noqa: E402
from router.app import setup as router_setup  # noqa: E402
from router.settings import Settings as RouterSettings  # noqa: E402

VIEWPORT = {"width": 1180, "height": 640}
QUICK = ["Thank you for waiting! Let me check that for you.", "Could you send me your order number, please?"]


def label_png(width: int = 220, height: int = 90) -> bytes:
    """A small grey "barcode" PNG (8-bit greyscale), written with zlib alone."""
    bars = [(x * 7919) % 5 < 2 for x in range(width)]
    rows = b"".join(
        b"\x00"
        + bytes(255 if not (10 < y < height - 10 and 10 < x < width - 10) else (30 if bars[x] else 250) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


async def shot(page: Any, name: str, clip: dict[str, float] | None = None) -> None:
    await page.screenshot(path=str(HERE / name), clip=clip)
    print(f"docs/img/{name}: {(HERE / name).stat().st_size // 1024} KiB")


async def play(desk_url: str, webchat_url: str, js: Any) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        visitor = await (await browser.new_context(base_url=webchat_url, viewport=VIEWPORT)).new_page()
        anna = await (await browser.new_context(base_url=desk_url, viewport=VIEWPORT)).new_page()
        boris = await (await browser.new_context(base_url=desk_url, viewport=VIEWPORT)).new_page()

        await anna.goto("/login")
        await anna.get_by_test_id("login-user").fill("anna")
        await shot(anna, "desk-login.png")
        await sign_in_live(anna, "anna")
        await anna.get_by_test_id("status-online").click()

        await visitor.goto("/demo")
        await visitor.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        await visitor.get_by_test_id("ol-launcher").click()
        await visitor.get_by_test_id("ol-name").fill("Maria")
        await visitor.get_by_test_id("ol-input").fill("Hello! My parcel has not arrived yet.")
        await visitor.get_by_test_id("ol-send").click()

        item = anna.get_by_test_id("chat-item").filter(has_text="Maria")
        await item.click()
        await expect(anna.get_by_test_id("offer-countdown")).to_be_visible()
        await shot(anna, "desk-offer.png")

        await anna.get_by_test_id("accept").click()
        await anna.get_by_test_id("quick-answers").select_option(label=QUICK[1])
        await anna.get_by_test_id("reply-send").click()
        await visitor.get_by_test_id("ol-input").fill("It is 4711.")
        await visitor.get_by_test_id("ol-send").click()
        await expect(anna.get_by_test_id("transcript")).to_contain_text("4711")
        await anna.get_by_test_id("attach-input").set_input_files(
            {"name": "shipping-label.png", "mimeType": "image/png", "buffer": label_png()}
        )
        await expect(anna.get_by_test_id("attachment-chip")).to_have_attribute("data-ready", "true")
        await anna.get_by_test_id("reply-input").fill("Found it: here is your shipping label.")
        await shot(anna, "desk-reply.png")
        await anna.get_by_test_id("reply-input").press("Enter")
        await expect(anna.get_by_test_id("entry-attachment")).to_have_count(1)
        await expect(visitor.get_by_test_id("ol-attachment")).to_have_count(1)
        await visitor.get_by_test_id("ol-attachment").scroll_into_view_if_needed()
        await shot(visitor, "webchat-attachment.png", clip={"x": 780, "y": 20, "width": 390, "height": 540})

        await sign_in_live(boris, "boris")
        await boris.get_by_test_id("status-online").click()
        await anna.get_by_test_id("transfer").click()
        await expect(anna.get_by_test_id("transfer-panel")).to_be_visible()
        await shot(anna, "desk-transfer.png")

        supervisor = await anna.context.new_page()
        await supervisor.goto("/supervisor")
        await supervisor.get_by_test_id("sup-read").first.click()
        await expect(supervisor.get_by_test_id("sup-watch-transcript")).to_contain_text("4711")
        await shot(supervisor, "desk-supervisor-read.png")

        # The queue: everyone away, a client waits; boris opens the Queue view and the chat, tags it.
        for page in (anna, boris):
            await page.get_by_test_id("status-away").click()
            await expect(page.get_by_test_id("status-away")).to_have_attribute("aria-pressed", "true")
        await client_writes(js, "pavel", "Pavel", "Do you deliver on Sundays? My address is Brivibas iela 12.")
        await boris.get_by_test_id("view-queue").click()
        await boris.get_by_test_id("view-item").filter(has_text="Pavel").click()
        await expect(boris.get_by_test_id("transcript")).to_contain_text("Sundays")
        await boris.get_by_test_id("tag-input").fill("delivery")
        await boris.get_by_test_id("tag-input").press("Enter")
        await expect(boris.get_by_test_id("tag")).to_have_count(1)
        await expect(boris.get_by_test_id("take")).to_be_visible()
        await shot(boris, "desk-views.png")

        # The admin pages: a line as a form (every key of docs/lines.md) and the operators with their queues.
        admin = await (await browser.new_context(base_url=desk_url, viewport={"width": 1280, "height": 1000})).new_page()
        await submit_login(admin, "admin")
        await admin.wait_for_url("**/admin**")
        await admin.goto("/admin/lines/form/support")
        await admin.wait_for_load_state("networkidle")
        await shot(admin, "admin-line-form.png")
        await admin.goto("/admin/operators")
        await admin.wait_for_load_state("networkidle")
        await shot(admin, "admin-operators.png")
        await browser.close()


async def client_writes(js: Any, visitor: str, name: str, text: str) -> None:
    """A website visitor's message, published as the webchat gateway does."""
    env = Inbound(
        id=f"webchat:demo:{visitor}:1",
        channel="webchat",
        account="demo",
        chat_id=visitor,
        user_id=visitor,
        profile=ClientProfile(name=name),
        text=text,
        received_at=utcnow(),
    )
    await js.publish(subjects.inbound("webchat", "demo", visitor), encode(env), headers={MSG_ID_HEADER: env.id})


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats")
        server.start()
        try:
            os.environ.update(ADMIN_ENV)  # this script's own connection is the admin; every service has its own key
            nc = await bus.connect(server.url, "screenshots", first_attempts=5)
            js = nc.jetstream()
            await bus.bootstrap(js)
            cfg = load(ROOT / "deploy/lines.example.toml")
            support = msgspec.structs.replace(cfg.lines[0], quick_answers=QUICK)
            sales = LineConfig(id="sales", name="Sales", queue=QueueConfig(operators=["anna", "boris"]))
            await apply(await bus.Buckets(js).open(), msgspec.structs.replace(cfg, lines=[support, sales]))
            router = await launch("router", RouterSettings(nats_url=server.url, http_port=0, **creds("router")), router_setup)
            desk = await launch(
                "desk",
                DeskSettings(
                    nats_url=server.url, http_port=0, cookie_secret="screenshots-secret-0123-Kq7Zt9Wm3xRv", **creds("desk")
                ),
                desk_setup,
            )
            webchat = await launch(
                "gateway-webchat",
                WebchatSettings(
                    nats_url=server.url,
                    http_port=0,
                    webchat_secret="screenshots-widget-0123-Kq7Zt9Wm3xRv",
                    **creds("gateway-webchat"),
                ),
                webchat_setup,
            )
            await wait_for(lambda: webchat.app[WEBCHAT].consumer.ready() is None, what="webchat outbound consumer")
            try:
                await play(f"http://127.0.0.1:{desk.port}", f"http://127.0.0.1:{webchat.port}", js)
            finally:
                await webchat.stop()
                await desk.stop()
                await router.stop()
                await nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
