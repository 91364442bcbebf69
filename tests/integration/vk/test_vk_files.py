"""Files both ways through the VK gateway and the local VK API.

In: a client's photo, document and voice message are fetched from the links in
the callback (only from VK's hosts) and kept in ``ol-vk-files`` before the
message is published. Out: an operator's file goes through VK's upload servers
(photo, document, voice message) and is attached to ``messages.send``; what VK
takes in no form is left out and reported, the rest is sent.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import aiohttp
from aiohttp import web
from support.timing import wait_for
from support.vk import ACCOUNT, GROUP_ID, failures, fake_vk, published, running_gateway, sender

from desk.files import FileStore
from openlines import files, subjects
from openlines.envelopes import MSG_ID_HEADER, Outbound, encode, utcnow

VOICE = b"OggS\x00\x02" + bytes(range(120))
PDF = b"%PDF-1.4 the contract"


def png(width: int, height: int) -> bytes:
    row = b"\x00" + b"\x80" * width

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")


def photo_item(small: str, big: str) -> dict[str, Any]:
    """A photo attachment as message_new carries it (API 5.199): its sizes, smallest first."""
    return {
        "type": "photo",
        "photo": {
            "album_id": -3,
            "date": 1_700_000_000,
            "id": 457239017,
            "owner_id": 1001,
            "access_key": "f3a1b2c3d4",
            "sizes": [
                {"height": 75, "width": 56, "type": "s", "url": small},
                {"height": 480, "width": 640, "type": "x", "url": big},
            ],
            "text": "",
            "has_tags": False,
        },
    }


def doc_item(url: str, title: str = "contract", ext: str = "pdf", size: int = len(PDF)) -> dict[str, Any]:
    return {
        "type": "doc",
        "doc": {"id": 6001, "owner_id": 1001, "title": title, "size": size, "ext": ext, "date": 1, "type": 1, "url": url},
    }


def voice_item(ogg: str) -> dict[str, Any]:
    return {
        "type": "audio_message",
        "audio_message": {
            "id": 7001,
            "owner_id": 1001,
            "duration": 3,
            "waveform": [0, 4, 9, 4, 0],
            "link_ogg": ogg,
            "link_mp3": ogg.replace(".ogg", ".mp3"),
            "access_key": "a1b2",
        },
    }


async def stored_bytes(nc: Any, ref: str) -> bytes:
    return (await files.Reader(nc.jetstream()).get(ref)).data


async def test_a_clients_photo_document_and_voice_message_are_fetched_and_kept(nc: Any, nats_server: Any) -> None:
    vk = fake_vk()
    await vk.start()
    big = png(64, 48)
    try:
        photo = photo_item(vk.host_file("s.jpg", png(8, 6)), vk.host_file("x.jpg", big))
        doc = doc_item(vk.doc_link("contract.pdf", PDF))  # a document's link redirects to the storage host
        voice = voice_item(vk.host_file("voice.ogg", VOICE))
        async with running_gateway(nats_server.url, vk.url) as gw, aiohttp.ClientSession() as http:
            cb = sender(http, gw)
            assert await cb.post(cb.message_new("see attached", from_id=1001, attachments=[photo, doc, voice])) == (200, "ok")
            [msg] = await wait_for(lambda: published(nc), what="the message published")
    finally:
        await vk.stop()
    assert msg.text == "see attached"
    image, contract, note = msg.attachments
    assert (image.kind, image.mime, image.name) == ("image", "image/png", "photo.png")
    assert image.extra["vk_ref"] == "photo1001_457239017_f3a1b2c3d4" and await stored_bytes(nc, image.ref) == big
    assert (contract.kind, contract.name, contract.mime) == ("file", "contract.pdf", "application/pdf")
    assert await stored_bytes(nc, contract.ref) == PDF
    assert (note.kind, note.mime, note.name, note.extra["duration"]) == ("voice", "audio/ogg", "voice.ogg", "3")
    assert await stored_bytes(nc, note.ref) == VOICE
    assert all(a.ref.startswith(f"{subjects.OBJ_VK_FILES}:{ACCOUNT}/") and "omitted" not in a.extra for a in msg.attachments)


async def test_a_file_link_off_vks_hosts_is_never_fetched_and_the_message_still_arrives(nc: Any, nats_server: Any) -> None:
    # An internal address a forged or compromised callback could name (the NATS monitor, crm-sync): never asked.
    internal = web.Application()
    asked: list[str] = []

    async def serve(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=b"internal data")

    internal.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(internal, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    vk = fake_vk()
    await vk.start()
    try:
        items = [
            doc_item(f"{base}/varz"),
            doc_item("https://evil.example.net/x.pdf", title="x"),
            voice_item(f"{base}/v.ogg"),
            doc_item(vk.redirect("moved", f"{base}/crm/leads"), title="moved"),  # a redirect is checked like a link
        ]
        async with running_gateway(nats_server.url, vk.url) as gw, aiohttp.ClientSession() as http:
            cb = sender(http, gw)
            assert await cb.post(cb.message_new("", from_id=1002, attachments=items)) == (200, "ok")
            [msg] = await wait_for(lambda: published(nc), what="the message published")
    finally:
        await vk.stop()
        await runner.cleanup()
    assert asked == [] and len(msg.attachments) == 4
    for att in msg.attachments:
        assert files.parse_ref(att.ref) is None and "not on a VK host" in att.extra["omitted"], att


async def put(nc: Any, out: Outbound) -> None:
    subject = subjects.outbound("vk", out.account, subjects.chat_key("vk", out.account, out.chat_id))
    await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: out.id})


def reply(out_id: str, peer: int, text: str, atts: list[Any]) -> Outbound:
    return Outbound(
        id=out_id,
        session_id="s-vk",
        channel="vk",
        account=ACCOUNT,
        chat_id=str(peer),
        text=text,
        attachments=atts,
        operator_id="anna",
        created_at=utcnow(),
    )


async def test_operator_files_go_through_vks_upload_servers_and_what_vk_refuses_is_reported(nc: Any, nats_server: Any) -> None:
    store = await FileStore.open(nc.jetstream())
    label = await store.put("s-vk", "label.png", "image/png", png(40, 30))
    banner = await store.put("s-vk", "banner.png", "image/png", png(15000, 10))  # too wide for a VK photo
    contract = await store.put("s-vk", "contract.pdf", "application/pdf", PDF)
    note = await store.put("s-vk", "note.ogg", "audio/ogg", VOICE)
    song = await store.put("s-vk", "song.mp3", "audio/mpeg", b"ID3\x03" + bytes(64))  # VK documents exclude MP3
    atts = [f.attachment("") for f in (label, banner, contract, note, song)]
    vk = fake_vk()
    await vk.start()
    try:
        vk.fail_next("photos.saveMessagesPhoto", 121)  # the first upload URL went stale: uploaded again
        async with running_gateway(nats_server.url, vk.url):
            await put(nc, reply("out:s-vk:1", 1001, "Your documents", atts))
            [sent] = await wait_for(lambda: vk.sent_to(1001), what="the message with its files")
            [event] = await wait_for(lambda: failures(nc), what="the MP3 reported as left out")
    finally:
        await vk.stop()
    assert sent.message == "Your documents"
    attached = [vk.media[a] for a in sent.attachment.split(",")]
    assert [(m.kind, m.name, m.owner_id) for m in attached] == [
        ("photo", "label.png", -GROUP_ID),
        ("doc", "banner.png", -GROUP_ID),
        ("doc", "contract.pdf", -GROUP_ID),
        ("audio_message", "note.ogg", -GROUP_ID),
    ]
    assert attached[2].data == PDF and attached[3].data == VOICE
    assert len(vk.calls_of("photos.getMessagesUploadServer")) == 3  # label twice (stale, then fresh), banner once
    assert [c.params["type"] for c in vk.calls_of("docs.getMessagesUploadServer")] == ["doc", "doc", "audio_message", "doc"]
    assert event.session_id == "s-vk" and "song.mp3" in event.reason and "file type is not allowed" in event.reason


async def test_a_reply_of_files_alone_is_one_message_and_an_expired_upload_url_is_replaced(nc: Any, nats_server: Any) -> None:
    store = await FileStore.open(nc.jetstream())
    contract = await store.put("s-vk", "contract.pdf", "application/pdf", PDF)
    vk = fake_vk()
    await vk.start()
    try:
        vk.expire_after_next_upload()  # uploaded, but the URL expired before docs.save: 105, upload again
        async with running_gateway(nats_server.url, vk.url):
            await put(nc, reply("out:s-vk:2", 1003, "", [contract.attachment("")]))
            [sent] = await wait_for(lambda: vk.sent_to(1003), what="the file")
    finally:
        await vk.stop()
    assert sent.message == "" and vk.media[sent.attachment].data == PDF
    assert [c.params.get("file", "")[:4] for c in vk.calls_of("docs.save")] == [f"{GROUP_ID}|"] * 2
    assert not await failures(nc)
