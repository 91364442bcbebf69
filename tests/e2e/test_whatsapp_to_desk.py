"""A WhatsApp client and an operator in the desk, both ways, over the real router, desk and WhatsApp gateway
on a real nats-server; WhatsApp is the local Cloud API peer, which signs its webhooks and sends the status
callbacks. Files both ways, delivery marks on the operator's messages, and the 24-hour window: outside it
the desk refuses free text and sends an approved template instead, until the client writes again."""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp
import pytest
from peers.whatsapp_api import contact, message, notification, text
from support import apply_lines, history, running_router
from support.desk import http_session, running_desk, sign_in
from support.timing import wait_for
from support.whatsapp import CLIENT, FOLLOW_UP, SHOP, fake_whatsapp, running_gateway, whatsapp_line

from openlines import subjects

pytestmark = pytest.mark.e2e

PHONE = SHOP["phone_number_id"]
ANNA = (
    '[operators.anna]\nname = "Anna Petrova"\n'
    'password_hash = "$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"\n'
)  # "demo"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200


def lines(templates: str = FOLLOW_UP, welcome: str = "") -> str:
    extra = f'[lines.auto_replies]\nwelcome = "{welcome}"\n' if welcome else ""
    return ANNA + whatsapp_line(templates=templates, extra=extra).replace('[operators.anna]\nname = "Anna"\n', "")


class Desk:
    def __init__(self, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        self.http = http
        self.h = headers

    async def chats(self) -> list[dict[str, Any]]:
        return list((await (await self.http.get("/api/chats")).json())["chats"])

    async def chat(self) -> dict[str, Any]:
        async def one() -> dict[str, Any] | None:
            found = [c for c in await self.chats() if c["channel"] == "whatsapp"]
            return found[0] if found else None

        return await wait_for(one, what="the WhatsApp chat in the desk")

    async def history(self, sid: str) -> dict[str, Any]:
        return dict(await (await self.http.get(f"/api/sessions/{sid}/history")).json())

    async def reply(self, sid: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = await self.http.post(f"/api/sessions/{sid}/reply", json={"client_msg_id": uuid.uuid4().hex, **body}, headers=self.h)
        return r.status, await r.json()

    async def upload(self, sid: str, name: str, data: bytes, mime: str) -> str:
        form = aiohttp.FormData()
        form.add_field("file", data, filename=name, content_type=mime)
        r = await self.http.post(f"/api/sessions/{sid}/files", data=form, headers=self.h)
        assert r.status == 200, await r.text()
        return str((await r.json())["file"]["id"])


async def desk_of(svc: Any, http: aiohttp.ClientSession) -> Desk:
    h = await sign_in(http, "anna")
    assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
    return Desk(http, h)


async def marks_shown(desk: Desk, sid: str, message_id: str, status: str) -> bool:
    mark = (await desk.history(sid))["marks"].get(message_id)
    return bool(mark) and mark["status"] == status


async def test_a_whatsapp_client_and_the_desk_talk_both_ways_with_files_and_marks(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, lines())
    async with (
        running_router(nats_server.url),
        fake_whatsapp() as peer,
        running_gateway(nats_server.url, peer),
        running_desk(nats_server.url) as desk_svc,
        http_session(desk_svc) as http,
    ):
        desk = await desk_of(desk_svc, http)
        photo = peer.add_client_media(PHONE, JPEG, "image/jpeg")
        first = text(CLIENT, "Hi! Is my order ready?")
        assert (await peer.client_says(PHONE, CLIENT, first, name="Sheena Nelson"))[0] == 200
        with_photo = message(CLIENT, "image", image={"id": photo, "mime_type": "image/jpeg", "caption": "the receipt"})
        assert (await peer.client_says(PHONE, CLIENT, with_photo))[0] == 200
        chat = await desk.chat()
        sid = chat["id"]
        assert chat["client_name"] == "Sheena Nelson" and chat["window"]["open"] is True
        assert [t["name"] for t in chat["templates"]] == ["follow_up"]
        assert chat["templates"][0]["variables"] == ["client name", "order number"]

        async def both_in() -> list[dict[str, Any]] | None:
            entries = [e for e in (await desk.history(sid))["entries"] if e["direction"] == "in"]
            return entries if len(entries) == 2 else None

        got = await wait_for(both_in, what="both client messages in the transcript")
        assert got[0]["text"] == "Hi! Is my order ready?"
        (att,) = got[1]["attachments"]
        assert got[1]["text"] == "the receipt" and att["kind"] == "image" and att["ref"].startswith("ol-wa-files:shop_wa/")
        kept = await (await nc.jetstream().object_store(subjects.OBJ_WHATSAPP_FILES)).get(att["ref"].split(":", 1)[1])
        assert kept.data == JPEG
        # The operator opens it through the desk (which checks she may read the chat).
        async with http.get(f"/api/sessions/{sid}/file", params={"ref": att["ref"]}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg" and await r.read() == JPEG

        # The operator answers with text and a file: WhatsApp gets the text once, and the file uploaded.
        file_id = await desk.upload(sid, "invoice.pdf", b"%PDF-1.4 invoice", "application/pdf")
        status, answer = await desk.reply(sid, {"text": "Yes, here is the invoice.", "files": [file_id]})
        assert status == 200, answer
        out_id = answer["message_id"]
        await wait_for(lambda: len(peer.sent_to(CLIENT)) == 2, what="the reply and its file at WhatsApp")
        words, doc = peer.sent_to(CLIENT)
        assert words.text == "Yes, here is the invoice." and doc.type == "document"
        assert peer.media[doc.payload["document"]["id"]].data == b"%PDF-1.4 invoice"
        await wait_for(lambda: marks_shown(desk, sid, out_id, "delivered"), what="the delivered mark in the desk")
        await peer.read(words)
        await wait_for(lambda: marks_shown(desk, sid, out_id, "read"), what="the read mark in the desk")
        await peer.idle()
        assert len(peer.sent_to(CLIENT)) == 2, "each part once"


async def test_outside_the_24_hours_free_text_is_refused_and_an_approved_template_is_sent(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, lines(welcome="Hello {client_name}, we will answer shortly."))
    async with (
        running_router(nats_server.url),
        fake_whatsapp() as peer,
        running_gateway(nats_server.url, peer),
        running_desk(nats_server.url) as desk_svc,
        http_session(desk_svc) as http,
    ):
        peer.approve_template("follow_up", "en_US", params=2)
        desk = await desk_of(desk_svc, http)
        # The client's message was written 25 hours ago (WhatsApp delivers the notification late).
        old = int(time.time()) - 25 * 3600
        late = notification(PHONE, [text(CLIENT, "Any news on order A-17?", ts=old)], contacts=[contact(CLIENT, "Ann")])
        assert (await peer.deliver(late))[0] == 200
        peer.age_window(PHONE, CLIENT, hours=25)
        chat = await desk.chat()
        sid = chat["id"]
        assert chat["window"]["open"] is False
        status, answer = await desk.reply(sid, {"text": "Yes, it shipped."})
        assert status == 409 and answer["error"] == "window_closed" and "template" in answer["detail"]
        # The welcome auto-reply was not sent either: WhatsApp would refuse it.
        notes = [e.text for e in await history(nc, sid) if e.direction == "system"]
        assert any("Auto-reply not sent" in n for n in notes)
        assert peer.sent_to(CLIENT) == []

        bad = {"template": {"name": "follow_up", "params": ["Ann"]}}
        status, answer = await desk.reply(sid, bad)
        assert status == 400 and "2 variables" in answer["detail"]
        status, answer = await desk.reply(sid, {"template": {"name": "spring_sale", "params": []}})
        assert status == 400 and "no template 'spring_sale' is declared for whatsapp/shop_wa" in answer["detail"]
        status, answer = await desk.reply(sid, {"template": {"name": "follow_up", "params": ["Ann", "A-17"]}})
        assert status == 200, answer
        await wait_for(lambda: peer.sent_to(CLIENT), what="the template at WhatsApp")
        (sent,) = peer.sent_to(CLIENT)
        assert sent.type == "template" and sent.payload["template"]["name"] == "follow_up"
        outs = [e for e in await history(nc, sid) if e.direction == "out"]
        assert outs[-1].text == "Hello Ann, we have news about your order A-17. Reply to continue."
        await wait_for(lambda: marks_shown(desk, sid, answer["message_id"], "delivered"), what="the template delivered")

        # The client answers: the window is open again and free text goes through.
        assert (await peer.client_says(PHONE, CLIENT, text(CLIENT, "Great, thanks!")))[0] == 200

        async def reopened() -> bool:
            return bool((await desk.chat())["window"]["open"])

        await wait_for(reopened, what="the window open again")
        status, answer = await desk.reply(sid, {"text": "You are welcome!"})
        assert status == 200, answer
        await wait_for(lambda: len(peer.sent_to(CLIENT)) == 2, what="the free reply at WhatsApp")
        assert peer.sent_to(CLIENT)[-1].text == "You are welcome!"


async def test_a_reply_whatsapp_refuses_shows_in_the_desk_as_not_delivered_with_the_reason(nc: Any, nats_server: Any) -> None:
    await apply_lines(nc, lines())
    async with (
        running_router(nats_server.url),
        fake_whatsapp() as peer,
        running_gateway(nats_server.url, peer),
        running_desk(nats_server.url) as desk_svc,
        http_session(desk_svc) as http,
    ):
        desk = await desk_of(desk_svc, http)
        assert (await peer.client_says(PHONE, CLIENT, text(CLIENT, "hello")))[0] == 200
        sid = (await desk.chat())["id"]
        peer.fail(CLIENT, 131026, times=-1)
        status, answer = await desk.reply(sid, {"text": "Hello, how can I help?"})
        assert status == 200
        await wait_for(lambda: marks_shown(desk, sid, answer["message_id"], "failed"), what="the failure in the desk")
        mark = (await desk.history(sid))["marks"][answer["message_id"]]
        assert "could not deliver" in mark["reason"] and "131026" in mark["reason"]
