"""CRM records from the anonymous website chat only once the visitor has written something.

Opening the widget (a socket, a token) creates nothing: not a session, not a
lead. A webchat conversation whose visitor has not written (a session opened
some other way) leaves no record either, with the built-in CRM or Bitrix24,
until the visitor writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from peers.bitrix24 import running_bitrix24
from support import apply_lines, events, publish, running_router
from support.crm import CRM_API_TOKEN, OPS, crm_line, linked, opened, running_crm_sync, telegram
from support.timing import wait_for
from support.webchat import connect, recv, webchat_process

from openlines import subjects
from openlines.envelopes import MSG_ID_HEADER, HistoryEntry, SessionEvent, encode, utcnow


async def leads(port: int) -> list[dict[str, Any]]:
    auth = {"Authorization": f"Bearer {CRM_API_TOKEN}"}  # crm-sync's read API takes only its token
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/crm/leads", headers=auth) as resp:
        assert resp.status == 200
        found: list[dict[str, Any]] = await resp.json()
        return found


async def test_forty_visitors_opening_the_widget_create_no_lead_and_one_who_writes_creates_one(
    nc: Any, nats_server: Any, tmp_path: Path
) -> None:
    await apply_lines(nc, OPS + crm_line())
    async with (
        running_router(nats_server.url),
        running_crm_sync(nats_server.url) as crm,
        webchat_process(nats_server.url, tmp_path) as base,  # the default abuse limits
        aiohttp.ClientSession() as http,
    ):
        sockets, welcomed, refused = [], [], 0
        for _ in range(40):
            ws, first = await connect(http, base)
            sockets.append(ws)
            if first["type"] == "welcome":
                welcomed.append(first)
            else:
                assert first["code"] == "rate_limited"
                refused += 1
        assert (len(welcomed), refused) == (10, 30)  # 10 new visitors a minute from one address, by default
        # One of them writes.
        writer = sockets[0]
        await writer.send_json({"type": "message", "id": "w1", "text": "How much is the blue sofa?"})
        assert (await recv(writer))["type"] == "ack"
        session = await opened(nc, "webchat", "demo", welcomed[0]["visitor"])
        await linked(nc, session.id)
        # crm-sync applies events in order: everything before this one is done. Only the writer has a lead.
        opened_sessions = await events(nc, "session_opened")
        assert [e.chat_id for e in opened_sessions] == [welcomed[0]["visitor"]]
        found = await leads(crm.port)
        assert [lead["im"] for lead in found] == [[f"imol|webchat|demo|{welcomed[0]['visitor']}"]]
        for ws in sockets:
            await ws.close()


async def test_a_webchat_conversation_without_a_word_from_the_visitor_gets_no_bitrix24_lead_until_they_write(
    nc: Any, nats_server: Any
) -> None:
    await apply_lines(nc, OPS + crm_line())
    js = nc.jetstream()
    silent = SessionEvent(
        id="opened:s-silent",
        kind="session_opened",
        at=utcnow(),
        session_id="s-silent",
        line_id="sales",
        client_id="c-silent",
        channel="webchat",
        account="demo",
        chat_id="visitor-silent-0123456789",
    )
    async with (
        running_bitrix24() as peer,
        running_router(nats_server.url),
        running_crm_sync(nats_server.url, crm_backend="bitrix24", bitrix24_webhook=peer.webhook),
    ):
        # A session of the widget opened without any visitor message (not what the router does today:
        # the guard holds whatever opens one), then a Telegram client who writes.
        await js.publish(subjects.event("session_opened"), encode(silent), headers={MSG_ID_HEADER: silent.id})
        await publish(nc, telegram("901", "Hello from Telegram", "1", name="Tom"))
        tg = await opened(nc, "telegram", "shopbot", "901")
        await linked(nc, tg.id)
        # Events are applied in order: the silent one is done, and made nothing.
        assert [lead["NAME"] for lead in peer.leads()] == ["Tom"]
        assert not [e for e in await events(nc, "crm_linked") if e.session_id == "s-silent"]

        # The visitor writes; the next event of that conversation links it.
        said = HistoryEntry(
            id="webchat:demo:visitor-silent-0123456789:m1",
            session_id="s-silent",
            direction="in",
            text="Now I have a question",
            author_id="visitor-silent-0123456789",
            at=utcnow(),
        )
        await js.publish(subjects.history("s-silent"), encode(said), headers={MSG_ID_HEADER: said.id})
        answered = SessionEvent(
            id="answered:s-silent",
            kind="session_answered",
            at=utcnow(),
            session_id="s-silent",
            line_id="sales",
            client_id="c-silent",
            operator_id="anna",
            channel="webchat",
            account="demo",
            chat_id="visitor-silent-0123456789",
        )
        await js.publish(subjects.event("session_answered"), encode(answered), headers={MSG_ID_HEADER: answered.id})
        evt = await linked(nc, "s-silent")
        assert "lead" in evt.reason
        await wait_for(lambda: len(peer.leads()) == 2, what="the visitor's lead")
        assert sorted(lead["ORIGIN_ID"] for lead in peer.leads()) == [
            "imol|telegram|shopbot|901",
            "imol|webchat|demo|visitor-silent-0123456789",
        ]
