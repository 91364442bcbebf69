"""The desk with the real router: status, a client's message arriving live, accept, reply, close."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from support import client_writes
from support.desk import desk_with_router, http_session, sign_in
from support.timing import scaled, wait_for

from desk.settings import Settings
from openlines import bus, subjects
from openlines.envelopes import Outbound
from openlines.runner import Service
from openlines.state import OperatorState, Session

SECRET = "integration-test-cookie-secret-0123"


@pytest.fixture
async def services(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    async with desk_with_router(nc, nats_server.url, SECRET) as desk:
        yield desk


@pytest.fixture
async def http(services: Service[Settings]) -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(services) as session:
        yield session


async def frame_where(ws: aiohttp.ClientWebSocketResponse, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next frame that matches, skipping others; fails after the receive timeout."""
    while True:
        frame: dict[str, Any] = await ws.receive_json(timeout=scaled(10))
        if match(frame):
            return frame


async def outbound_texts(js: Any, visitor: str = "visitor-1") -> list[Outbound]:
    subject = subjects.outbound("webchat", "demo", subjects.chat_key("webchat", "demo", visitor))
    return [msgspec.json.decode(data, type=Outbound) for _, data in await bus.read_subject(js, subjects.STREAM_OUT, subject)]


async def test_operator_goes_online_through_the_api(nc: Any, http: aiohttp.ClientSession) -> None:
    h = await sign_in(http, "anna")
    r = await http.post("/api/status", json={"status": "online"}, headers=h)
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "online"
    buckets = await bus.Buckets(nc.jetstream()).open()

    async def online() -> bool:
        state, _ = await bus.kv_get(buckets.operators, "anna", OperatorState)
        return state is not None and state.status == "online"

    await wait_for(online, what="anna online in ol-operators")


async def test_a_client_message_arrives_live_and_the_operator_answers_and_closes(nc: Any, http: aiohttp.ClientSession) -> None:
    js = nc.jetstream()
    buckets = await bus.Buckets(js).open()
    h = await sign_in(http, "anna")
    async with http.ws_connect("/ws") as ws:
        snap = await ws.receive_json(timeout=scaled(5))
        assert snap["type"] == "snapshot" and snap["chats"] == []
        assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
        await frame_where(ws, lambda f: f == {"type": "status", "status": "online"})

        await client_writes(nc, "visitor-1", "wc-1", "Hello, my order is late", name="Maria Client")
        chat = (await frame_where(ws, lambda f: f["type"] == "chat"))["chat"]
        sid = chat["id"]
        assert chat["client_name"] == "Maria Client" and chat["status"] == "assigned" and chat["line_name"] == "Customer support"

        # The first message is in the transcript before the chat is offered: the page reads it from the API.
        history = await (await http.get(f"/api/sessions/{sid}/history")).json()
        assert "Hello, my order is late" in [e["text"] for e in history["entries"] if e["direction"] == "in"]

        # A second message of the client is pushed to the operator holding the chat.
        await client_writes(nc, "visitor-1", "wc-2", "Order 1234", name="Maria Client")
        msg = await frame_where(ws, lambda f: f["type"] == "message" and f.get("text") == "Order 1234")
        assert msg["session_id"] == sid and msg["direction"] == "in"

        accepted = await http.post(f"/api/sessions/{sid}/accept", headers=h)
        assert accepted.status == 200, await accepted.text()
        assert (await accepted.json())["session"]["status"] == "answered"

        reply = {"text": "Let me check, one moment.", "client_msg_id": "reply-1"}
        sent = await http.post(f"/api/sessions/{sid}/reply", json=reply, headers=h)
        assert sent.status == 200, await sent.text()
        out = await wait_for(
            lambda: _with_text(outbound_texts(js), reply["text"]), what="the reply on ol.out.webchat.demo.<chat_key>"
        )
        assert out.session_id == sid and out.operator_id == "anna" and not out.auto
        mine = await frame_where(
            ws, lambda f: f["type"] == "message" and f.get("direction") == "out" and f.get("text") == reply["text"]
        )
        assert mine["session_id"] == sid

        # A retried reply (same client_msg_id) is not sent twice.
        again = await http.post(f"/api/sessions/{sid}/reply", json=reply, headers=h)
        assert again.status == 200
        assert [o.text for o in await outbound_texts(js)].count(reply["text"]) == 1

        closed = await http.post(f"/api/sessions/{sid}/close", headers=h)
        assert closed.status == 200, await closed.text()
        await frame_where(ws, lambda f: f["type"] == "closed" and f["session_id"] == sid)
        session, _ = await bus.kv_get(buckets.sessions, sid, Session)
        assert session is not None and session.status == "closed"

        # Closed, yet it was mine: the transcript stays readable; acting on it is refused by the router.
        assert (await http.get(f"/api/sessions/{sid}/history")).status == 200
        late = await http.post(f"/api/sessions/{sid}/reply", json={"text": "hi", "client_msg_id": "r2"}, headers=h)
        assert late.status in (403, 404, 409), await late.text()
        assert set(await late.json()) == {"error", "detail"}


async def _with_text(outs: Any, text: str) -> Outbound | None:
    return next((o for o in await outs if o.text == text), None)


async def test_someone_elses_chat_cannot_be_touched(nc: Any, http: aiohttp.ClientSession, services: Service[Settings]) -> None:
    h = await sign_in(http, "anna")
    assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
    async with http.ws_connect("/ws") as ws:
        await ws.receive_json(timeout=scaled(5))
        await client_writes(nc, "visitor-1", "wc-9", "Hi", name="Maria Client")
        sid = (await frame_where(ws, lambda f: f["type"] == "chat"))["chat"]["id"]
    async with http_session(services) as boris:
        hb = await sign_in(boris, "boris")
        # He may read it (an operator of its line), not act on it.
        assert (await boris.get(f"/api/sessions/{sid}/history")).status == 200
        r = await boris.post(f"/api/sessions/{sid}/reply", json={"text": "mine now", "client_msg_id": "b1"}, headers=hb)
        assert r.status == 403, await r.text()
        assert (await r.json())["error"] == "forbidden"
