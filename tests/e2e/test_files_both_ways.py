"""Files both ways on every channel, end to end: an operator in the desk (headless Chromium), the real
router and gateways over a real nats-server, the messengers as local protocol peers, mail through a real
Dovecot and SMTP server, and a visitor on the real widget.

In (one test per channel): what the client sends reaches the operator as a preview, a player or a
download the desk serves. Out (one per channel): the operator's file reaches the client as that
channel's own attachment - a Telegram upload, a VK attachment, a MIME part, a file in the widget.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from peers.mailservers import Dovecot, SmtpSink, append, client_mail, mailbox_config
from peers.mailservers import running_gateway as running_email
from peers.telegram_api import message_update
from support import apply_lines, running_router
from support.corpus import CORPUS
from support.desk import BROWSER_MARKS, chromium, desk_url, go_online, new_page, running_desk, sign_in_live
from support.servers import creds
from support.telegram import SUPPORT, fake_telegram
from support.telegram import running_gateway as running_telegram
from support.timing import scaled, wait_for
from support.vk import ACCOUNT as VK_ACCOUNT
from support.vk import fake_vk, sender
from support.vk import running_gateway as running_vk
from support.webchat import SECRET as WIDGET_SECRET

from gateway_webchat import Settings as WebchatSettings
from gateway_webchat import setup as webchat_setup
from gateway_webchat.service import WEBCHAT
from openlines.runner import launch

pytestmark = [pytest.mark.e2e, pytest.mark.mail, *BROWSER_MARKS]
playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect

LINES = f"""
[operators.anna]
name = "Anna Petrova"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"

[[lines]]
id = "everywhere"
name = "Every channel"
channels = [
  {{ channel = "telegram", account = "support_bot" }},
  {{ channel = "vk", account = "{VK_ACCOUNT}" }},
  {{ channel = "email", account = "support" }},
  {{ channel = "webchat", account = "demo" }},
]
[lines.queue]
operators = ["anna"]
wait_seconds = 300
"""  # anna's password is "demo", as in deploy/lines.example.toml


def slow() -> float:
    """Milliseconds a step through NATS, the router and a gateway may take (20 s idle, stretched by the load)."""
    return scaled(20) * 1000


PDF = b"%PDF-1.4 the price list, 1 page"
VOICE = b"OggS\x00\x02" + bytes(range(90))


def png(width: int = 2, height: int = 2) -> bytes:
    """A real PNG (browsers decode it: a preview that loads has naturalWidth == width)."""
    row = b"\x00" + b"\x40\x80\xc0" * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


IMAGE = png(3, 2)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with chromium() as b:
        yield b


@asynccontextmanager
async def desk_for(nc: Any, nats_server: Any, browser: Any) -> AsyncIterator[Any]:
    """The lines applied, the router and the desk running, Anna signed in and online in Chromium."""
    await apply_lines(nc, LINES)
    async with running_router(nats_server.url), running_desk(nats_server.url) as desk:
        page = await new_page(browser, desk_url(desk), errors := [])
        await sign_in_live(page, "anna")
        await go_online(page)
        yield page
        assert errors == []


async def take_chat(page: Any) -> None:
    """Open the chat offered to Anna and accept it."""
    item = page.get_by_test_id("chat-item").first
    await expect(item).to_be_visible(timeout=slow())
    await item.click()
    await page.get_by_test_id("accept").click()
    await expect(page.get_by_test_id("accept")).to_be_hidden()


async def fetched(page: Any, locator: Any, attribute: str) -> tuple[int, int, str]:
    """What the operator's browser gets from a file link of the page: status, bytes, type."""
    url = await locator.get_attribute(attribute)
    assert url, attribute
    result = await page.evaluate(
        "async (u) => { const r = await fetch(u); const b = await r.arrayBuffer();"
        " return [r.status, b.byteLength, r.headers.get('content-type') || '']; }",
        url,
    )
    return int(result[0]), int(result[1]), str(result[2])


async def shows_preview(page: Any, size: int) -> None:
    image = page.get_by_test_id("attachment-image").first
    await expect(image).to_be_visible(timeout=slow())
    await expect(image).to_have_js_property("naturalWidth", 3)  # decoded: the desk served the real image
    assert await fetched(page, image, "src") == (200, size, "image/png")


async def operator_sends(page: Any, caption: str, *uploads: tuple[str, str, bytes]) -> None:
    """Anna attaches files in the reply box and sends them with a caption."""
    for name, mime, data in uploads:
        await page.get_by_test_id("attach-input").set_input_files({"name": name, "mimeType": mime, "buffer": data})
    chips = page.get_by_test_id("attachment-chip")
    await expect(chips).to_have_count(len(uploads))
    for i in range(len(uploads)):
        await expect(chips.nth(i)).to_have_attribute("data-ready", "true", timeout=slow())
    await page.get_by_test_id("reply-input").fill(caption)
    await page.get_by_test_id("reply-input").press("Enter")
    await expect(chips).to_have_count(0)
    mine = page.get_by_test_id("transcript-entry").filter(has_text=caption)
    await expect(mine.get_by_test_id("entry-attachment")).to_have_count(len(uploads), timeout=slow())


# -- Telegram -------------------------------------------------------------------------------------


def corpus_update(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / "telegram" / name).read_text(encoding="utf-8"))


async def test_telegram_a_clients_document_voice_and_photo_open_in_the_desk(nc: Any, nats_server: Any, browser: Any) -> None:
    document = corpus_update("tgdocs_webhooks__message_with_document.json")
    voice = corpus_update("tgdocs_webhooks__voice_message.json")
    voice["update_id"] = document["update_id"] + 1
    voice["message"]["voice"]["file_id"] += "-voice"  # the docs page gives both files one id
    photo_sizes = [{"file_id": "photo-big", "file_unique_id": "pb", "width": 3, "height": 2, "file_size": len(IMAGE)}]
    photo = message_update(document["update_id"] + 2, 1111111, None, photo=photo_sizes, caption="and the box")
    photo["message"]["from"] = document["message"]["from"]
    async with desk_for(nc, nats_server, browser) as page, fake_telegram() as tg, running_telegram(nats_server.url, tg):
        tg.add_file(document["message"]["document"]["file_id"], PDF, ext=".pdf")
        tg.add_file(voice["message"]["voice"]["file_id"], VOICE, folder="voice", ext=".oga")
        tg.add_file("photo-big", IMAGE, folder="photos", ext=".jpg")
        for update in (document, voice, photo):
            assert (await tg.deliver(SUPPORT["token"], update))[0] == 200
        await take_chat(page)
        entries = page.get_by_test_id("transcript-entry")
        await expect(entries.filter(has=page.get_by_test_id("entry-attachment"))).to_have_count(3, timeout=slow())
        link = page.get_by_test_id("attachment-download").filter(has_text="Testfile.pdf")
        assert await fetched(page, link, "href") == (200, len(PDF), "application/octet-stream")
        player = page.get_by_test_id("attachment-audio")
        await expect(player).to_have_count(1)
        assert await fetched(page, player, "src") == (200, len(VOICE), "audio/ogg")
        await shows_preview(page, len(IMAGE))


async def test_telegram_an_operators_files_are_uploaded_to_the_client(nc: Any, nats_server: Any, browser: Any) -> None:
    async with desk_for(nc, nats_server, browser) as page, fake_telegram() as tg, running_telegram(nats_server.url, tg):
        assert (await tg.deliver(SUPPORT["token"], message_update(7001, 777, "Can I see the label?")))[0] == 200
        await take_chat(page)
        await operator_sends(page, "Here it is", ("label.png", "image/png", IMAGE), ("prices.pdf", "application/pdf", PDF))
        await wait_for(lambda: len(tg.sent(777)) == 3, timeout=20, what="text, photo and document at the Bot API")
    text, photo, doc = tg.sent(777)
    assert (text.method, text.params["text"]) == ("sendMessage", "Here it is")
    assert photo.method == "sendPhoto" and photo.files["photo"].data == IMAGE
    assert doc.method == "sendDocument" and doc.files["document"].data == PDF and doc.files["document"].filename == "prices.pdf"


# -- VK -------------------------------------------------------------------------------------------


async def test_vk_a_clients_photo_document_and_voice_message_open_in_the_desk(nc: Any, nats_server: Any, browser: Any) -> None:
    vk = fake_vk(users={2002: ("Olga", "Smirnova")})
    await vk.start()
    try:
        photo = {
            "type": "photo",
            "photo": {
                "id": 457239017,
                "owner_id": 2002,
                "access_key": "k1",
                "date": 1,
                "album_id": -3,
                "sizes": [{"type": "x", "width": 3, "height": 2, "url": vk.host_file("x.png", IMAGE)}],
            },
        }
        doc = {
            "type": "doc",
            "doc": {
                "id": 5,
                "owner_id": 2002,
                "title": "invoice",
                "ext": "pdf",
                "size": len(PDF),
                "url": vk.doc_link("invoice.pdf", PDF),
            },
        }
        voice = {
            "type": "audio_message",
            "audio_message": {"id": 6, "owner_id": 2002, "duration": 2, "link_ogg": vk.host_file("v.ogg", VOICE)},
        }
        async with (
            desk_for(nc, nats_server, browser) as page,
            running_vk(nats_server.url, vk.url) as gw,
            aiohttp.ClientSession() as http,
        ):
            cb = sender(http, gw)
            assert await cb.post(cb.message_new("my invoice", from_id=2002, attachments=[photo, doc, voice])) == (200, "ok")
            await take_chat(page)
            await shows_preview(page, len(IMAGE))
            link = page.get_by_test_id("attachment-download").filter(has_text="invoice.pdf")
            assert await fetched(page, link, "href") == (200, len(PDF), "application/octet-stream")
            player = page.get_by_test_id("attachment-audio")
            assert await fetched(page, player, "src") == (200, len(VOICE), "audio/ogg")
    finally:
        await vk.stop()


async def test_vk_an_operators_files_go_through_vks_upload_servers(nc: Any, nats_server: Any, browser: Any) -> None:
    vk = fake_vk(users={2002: ("Olga", "Smirnova")})
    await vk.start()
    try:
        async with (
            desk_for(nc, nats_server, browser) as page,
            running_vk(nats_server.url, vk.url) as gw,
            aiohttp.ClientSession() as http,
        ):
            cb = sender(http, gw)
            assert await cb.post(cb.message_new("Send me the contract please", from_id=2002)) == (200, "ok")
            await take_chat(page)
            await operator_sends(
                page, "The contract", ("label.png", "image/png", IMAGE), ("contract.pdf", "application/pdf", PDF)
            )
            [sent] = await wait_for(lambda: vk.sent_to(2002), timeout=20, what="the message with its files at VK")
    finally:
        await vk.stop()
    assert sent.message == "The contract"
    media = [vk.media[a] for a in sent.attachment.split(",")]
    assert [(m.kind, m.name, m.data) for m in media] == [("photo", "label.png", IMAGE), ("doc", "contract.pdf", PDF)]


# -- e-mail ---------------------------------------------------------------------------------------


async def test_email_a_clients_attachments_open_in_the_desk(
    nc: Any, nats_server: Any, browser: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with desk_for(nc, nats_server, browser) as page, running_email(nats_server.url, [mailbox_config(imap, smtp)]):
        mail = client_mail("ann@client.example.test", "The damaged box and the invoice.")
        mail.add_attachment(IMAGE, maintype="image", subtype="png", filename="box.png")
        mail.add_attachment(PDF, maintype="application", subtype="pdf", filename="invoice.pdf")
        await append(imap, mail)
        await take_chat(page)
        await shows_preview(page, len(IMAGE))
        link = page.get_by_test_id("attachment-download").filter(has_text="invoice.pdf")
        assert await fetched(page, link, "href") == (200, len(PDF), "application/octet-stream")


async def test_email_an_operators_files_leave_as_mime_attachments(
    nc: Any, nats_server: Any, browser: Any, imap: Dovecot, smtp: SmtpSink
) -> None:
    async with desk_for(nc, nats_server, browser) as page, running_email(nats_server.url, [mailbox_config(imap, smtp)]):
        await append(imap, client_mail("ann@client.example.test", "Where is my invoice?"))
        await take_chat(page)
        await operator_sends(page, "Your invoice is attached.", ("invoice.pdf", "application/pdf", PDF))

        def answer() -> list[Any]:
            return [r for r in smtp.to("ann@client.example.test") if b"Your invoice is attached." in r.data]

        [sent] = await wait_for(answer, timeout=20, what="the reply at the SMTP server")
    parts = [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in sent.message.iter_attachments()]
    assert parts == [("invoice.pdf", "application/pdf", PDF)]


# -- the website widget ---------------------------------------------------------------------------


@asynccontextmanager
async def widget(nats_server: Any, browser: Any) -> AsyncIterator[Any]:
    """The webchat gateway and a visitor on its demo page, connected."""
    async with AsyncExitStack() as stack:
        gw = await launch(
            "gateway-webchat",
            WebchatSettings(
                nats_url=nats_server.url,
                http_port=0,
                webchat_secret=WIDGET_SECRET,
                shutdown_timeout=3.0,
                **creds("gateway-webchat"),
            ),
            webchat_setup,
            first_attempts=5,
        )
        stack.push_async_callback(gw.stop)
        await wait_for(lambda: gw.app[WEBCHAT].consumer.ready() is None, what="the widget's outbound consumer")
        visitor = await new_page(browser, f"http://127.0.0.1:{gw.port}")
        await visitor.goto("/demo")
        await visitor.wait_for_function("window.openlinesWidget && window.openlinesWidget.connected === true")
        await visitor.get_by_test_id("ol-launcher").click()
        yield visitor


async def test_webchat_a_visitors_upload_opens_in_the_desk(nc: Any, nats_server: Any, browser: Any) -> None:
    async with desk_for(nc, nats_server, browser) as page, widget(nats_server, browser) as visitor:
        await visitor.get_by_test_id("ol-file").set_input_files({"name": "box.png", "mimeType": "image/png", "buffer": IMAGE})
        mine = visitor.get_by_test_id("ol-msg-out").last
        await expect(mine).to_have_attribute("data-status", "sent", timeout=slow())
        await expect(mine.get_by_test_id("ol-attachment").locator("img")).to_have_js_property("naturalWidth", 3)
        await take_chat(page)
        await shows_preview(page, len(IMAGE))


async def test_webchat_an_operators_file_shows_in_the_widget(nc: Any, nats_server: Any, browser: Any) -> None:
    async with desk_for(nc, nats_server, browser) as page, widget(nats_server, browser) as visitor:
        await visitor.get_by_test_id("ol-input").fill("Is there a size chart?")
        await visitor.get_by_test_id("ol-send").click()
        await take_chat(page)
        await operator_sends(page, "The size chart", ("sizes.png", "image/png", IMAGE), ("sizes.pdf", "application/pdf", PDF))
        reply = visitor.get_by_test_id("ol-msg-in").filter(has_text="The size chart")
        await expect(reply.get_by_test_id("ol-attachment")).to_have_count(2, timeout=slow())
        await expect(reply.locator("img")).to_have_js_property("naturalWidth", 3)
        pdf_link = reply.get_by_test_id("ol-attachment").filter(has_text="sizes.pdf")
        assert await fetched(visitor, pdf_link, "href") == (200, len(PDF), "application/octet-stream")
