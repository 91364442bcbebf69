"""Files both ways through the Telegram gateway and the local Bot API.

In: a client's document, voice message or photo is fetched (``getFile``, then
the file link) and kept in ``ol-tg-files`` before the update is published;
what Telegram will not let a bot download is published without it and says
why. Out: an operator's file is uploaded by type (``sendPhoto`` /
``sendVoice`` / ``sendDocument`` ...); a picture Telegram refuses as a photo
goes as a document, one over the upload limit is ``delivery_failed``.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from peers.telegram_api import message_update, user
from support import events
from support.corpus import CORPUS
from support.telegram import SUPPORT, fake_telegram, inbound_of, running_gateway
from support.timing import wait_for

from desk.files import FileStore
from openlines import files, subjects
from openlines.envelopes import MSG_ID_HEADER, Attachment, Inbound, Outbound, encode, utcnow

TOKEN = SUPPORT["token"]
ACCOUNT = "support_bot"
VOICE = b"OggS\x00\x02" + bytes(range(200))
PDF = b"%PDF-1.4 a price list"


def png(width: int, height: int) -> bytes:
    """A real PNG of ``width`` x ``height`` (one grey row repeated; compresses to little)."""
    row = b"\x00" + b"\x80" * width
    raw = zlib.compress(row * height)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def corpus_update(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / "telegram" / name).read_text(encoding="utf-8"))


async def published(nc: Any, count: int) -> list[Inbound]:
    got = await inbound_of(nc, ACCOUNT)
    return got if len(got) >= count else []


async def stored_bytes(nc: Any, ref: str) -> bytes:
    return (await files.Reader(nc.jetstream()).get(ref)).data


async def test_a_document_and_a_voice_message_from_real_updates_are_fetched_and_kept(nc: Any, nats_server: Any) -> None:
    document = corpus_update("tgdocs_webhooks__message_with_document.json")
    voice = corpus_update("tgdocs_webhooks__voice_message.json")
    voice["update_id"] = document["update_id"] + 1  # both updates come from one docs page, with one update id
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        peer.add_file(document["message"]["document"]["file_id"], PDF, ext=".pdf")
        peer.add_file(voice["message"]["voice"]["file_id"] + "-voice", VOICE, folder="voice", ext=".oga")
        voice["message"]["voice"]["file_id"] += "-voice"
        assert (await peer.deliver(TOKEN, document))[0] == 200
        assert (await peer.deliver(TOKEN, voice))[0] == 200
        doc_in, voice_in = await wait_for(lambda: published(nc, 2), what="both updates published")

    [doc] = doc_in.attachments
    assert (doc.kind, doc.name, doc.mime, doc.size) == ("file", "Testfile.pdf", "application/pdf", len(PDF))
    assert doc.ref.startswith(f"{subjects.OBJ_TELEGRAM_FILES}:{ACCOUNT}/")
    assert doc.extra["file_id"] == document["message"]["document"]["file_id"] and "omitted" not in doc.extra
    assert await stored_bytes(nc, doc.ref) == PDF
    [vo] = voice_in.attachments
    assert (vo.kind, vo.mime, vo.size, vo.extra["duration"]) == ("voice", "audio/ogg", len(VOICE), "5")
    assert await stored_bytes(nc, vo.ref) == VOICE
    assert [c.params["file_id"] for c in peer.called("getFile")] == [doc.extra["file_id"], vo.extra["file_id"]]
    assert len(peer.downloads) == 2


async def test_a_photo_is_kept_in_its_largest_size(nc: Any, nats_server: Any) -> None:
    big = png(64, 48)
    sizes = [
        {"file_id": "small-id", "file_unique_id": "s1", "width": 8, "height": 6, "file_size": 100},
        {"file_id": "big-id", "file_unique_id": "b1", "width": 64, "height": 48, "file_size": len(big)},
    ]
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        peer.add_file("small-id", png(8, 6), folder="photos", ext=".jpg")
        peer.add_file("big-id", big, folder="photos", ext=".jpg")
        assert (await peer.deliver(TOKEN, message_update(9001, 777, None, photo=sizes, caption="my receipt")))[0] == 200
        [msg] = await wait_for(lambda: published(nc, 1), what="the photo published")
    assert msg.text == "my receipt"
    [photo] = msg.attachments
    assert photo.kind == "image" and photo.extra["file_id"] == "big-id"
    assert await stored_bytes(nc, photo.ref) == big


async def test_files_telegram_will_not_hand_over_leave_the_message_whole_and_say_why(nc: Any, nats_server: Any) -> None:
    cases = {
        # update id: (the update's document, what the operator is told)
        9101: ({"file_id": "huge-declared", "file_name": "film.mp4", "file_size": 30 * 1024 * 1024}, "bots may download"),
        9102: ({"file_id": "huge-real", "file_name": "dump.zip"}, "file is too big"),
        9103: ({"file_id": "never-seen", "file_name": "x.pdf"}, "invalid file_id"),
        9104: ({"file_id": "stale", "file_name": "late.pdf"}, "HTTP 404"),
    }
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        peer.add_file("huge-real", b"z" * (20 * 1024 * 1024 + 1))
        for update_id, (document, _) in cases.items():
            peer.stale_links = update_id == 9104  # the link expired between getFile and the download
            if update_id == 9104:
                peer.add_file("stale", PDF)
            update = message_update(update_id, 700 + update_id % 100, None, document=document, from_user=user(1))
            assert (await peer.deliver(TOKEN, update))[0] == 200
        got = await wait_for(lambda: published(nc, len(cases)), what="every update published")
    by_id = {m.attachments[0].extra["file_id"] if "file_id" in m.attachments[0].extra else m.attachments[0].ref: m for m in got}
    for document, why in cases.values():
        [att] = by_id[document["file_id"]].attachments
        assert att.ref == document["file_id"] and files.parse_ref(att.ref) is None  # still Telegram's file id
        assert why in att.extra["omitted"], (document, att.extra)
        assert att.name == document["file_name"]
    assert "huge-declared" not in [c.params.get("file_id") for c in peer.called("getFile")]  # not even asked


async def publish_out(nc: Any, out: Outbound) -> None:
    subject = subjects.outbound("telegram", out.account, subjects.chat_key("telegram", out.account, out.chat_id))
    await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: out.id})


def reply_with(out_id: str, chat: int, atts: list[Attachment]) -> Outbound:
    return Outbound(
        id=out_id,
        session_id="s-files",
        channel="telegram",
        account=ACCOUNT,
        chat_id=str(chat),
        attachments=atts,
        created_at=utcnow(),
    )


async def test_operator_files_are_uploaded_by_type_and_a_photo_telegram_refuses_goes_as_a_document(
    nc: Any, nats_server: Any
) -> None:
    store = await FileStore.open(nc.jetstream())
    label = await store.put("s-files", "label.png", "image/png", png(40, 30))
    banner = await store.put("s-files", "banner.png", "image/png", png(12000, 1))  # width + height > 10000
    note = await store.put("s-files", "note.ogg", "audio/ogg", VOICE)
    song = await store.put("s-files", "song.mp3", "audio/mpeg", b"ID3\x03" + bytes(100))
    clip = await store.put("s-files", "clip.mp4", "video/mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    prices = await store.put("s-files", "prices.pdf", "application/pdf", PDF)
    atts = [f.attachment("https://desk.example.com") for f in (label, banner, note, song, clip, prices)]
    assert [a.kind for a in atts] == ["image", "image", "voice", "audio", "video", "file"]
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        await publish_out(nc, reply_with("out:files:1", 777, atts))
        await wait_for(lambda: len(peer.sent(777)) == 6, what="six uploads")
        assert not await events(nc, "delivery_failed")
    sent = peer.sent(777)
    assert [c.method for c in sent] == ["sendPhoto", "sendDocument", "sendVoice", "sendAudio", "sendVideo", "sendDocument"]
    refused = [c for c in peer.sent(777, ok_only=False) if c.status != 200]
    assert [(c.method, c.status) for c in refused] == [("sendPhoto", 400)]  # the banner, tried as a photo first
    uploaded = [next(iter(c.files.values())) for c in sent]
    assert [u.filename for u in uploaded] == ["label.png", "banner.png", "note.ogg", "song.mp3", "clip.mp4", "prices.pdf"]
    assert uploaded[2].data == VOICE and uploaded[5].data == PDF


async def test_a_file_over_the_upload_limit_is_delivery_failed_with_the_reason(nc: Any, nats_server: Any) -> None:
    store = await FileStore.open(nc.jetstream())
    big = await store.put("s-files", "scan.pdf", "application/pdf", PDF + bytes(4096))
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer):
        peer.max_upload = 2048  # as the Bot API's 50 MB, without moving 50 MB through the test
        await publish_out(nc, reply_with("out:files:big", 778, [big.attachment("")]))
        [evt] = await wait_for(lambda: events(nc, "delivery_failed"), what="delivery_failed")
    assert evt.chat_id == "778" and "too large" in evt.reason
    assert [(c.method, c.status) for c in peer.sent(778, ok_only=False)] == [("sendDocument", 413)]
