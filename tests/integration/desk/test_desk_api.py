"""The desk over real HTTP and a real nats-server, without the router.

What needs the router's answers (status, accept, reply, close) is in
test_desk_with_router.py; here: sign-in, the guards, KV reads, live push.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import pytest
from support import apply_lines
from support.desk import http_session, running_desk, try_sign_in
from support.timing import scaled

from desk.settings import Settings
from openlines import bus, subjects
from openlines.envelopes import MSG_ID_HEADER, HistoryEntry, SessionEvent, encode
from openlines.runner import Service
from openlines.state import OperatorAccount, OperatorState, Session

SECRET = "integration-test-cookie-secret-0123"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


# -- harness ---------------------------------------------------------------------------------


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Service[Settings]]:
    await apply_lines(nc)  # deploy/lines.example.toml
    async with running_desk(nats_server.url, SECRET) as svc:
        yield svc


@pytest.fixture
async def http(desk: Service[Settings]) -> AsyncIterator[aiohttp.ClientSession]:
    async with http_session(desk) as session:
        yield session


async def csrf_of_workspace(http: aiohttp.ClientSession) -> str:
    page = await (await http.get("/")).text()
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, page
    return found.group(1)


def session_record(sid: str, operator_id: str, status: str = "answered", name: str = "Client") -> Session:
    return msgspec.convert(
        {
            "id": sid,
            "line_id": "support",
            "client_id": f"c-{sid}",
            "channel": "webchat",
            "account": "demo",
            "chat_id": f"visitor-{sid}",
            "chat_key": subjects.chat_key("webchat", "demo", f"visitor-{sid}"),
            "client_name": name,
            "status": status,
            "operator_id": operator_id,
            "opened_at": T0,
        },
        Session,
    )


async def put(kv: Any, key: str, obj: msgspec.Struct) -> None:
    await kv.put(key, msgspec.json.encode(obj))


# -- sign-in --------------------------------------------------------------------------------------


async def test_sign_in_with_the_right_password_opens_the_workspace(http: aiohttp.ClientSession) -> None:
    done = await try_sign_in(http, "anna", "demo")
    assert done.status == 303 and done.headers["Location"] == "/?signed_in=1"  # the workspace, told to start online
    cookie = done.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("ol_desk="))
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie and "Max-Age=43200" in session_cookie
    assert "Secure" not in session_cookie
    page = await http.get("/")
    assert page.status == 200
    text = await page.text()
    assert "Anna Petrova" in text and 'data-testid="status-online"' in text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


async def test_wrong_password_and_unknown_user_get_the_same_answer(http: aiohttp.ClientSession) -> None:
    wrong = await try_sign_in(http, "anna", "not-demo")
    unknown = await try_sign_in(http, "nobody", "demo")
    for r in (wrong, unknown):
        assert r.status == 401
        assert "Wrong login or password." in await r.text()
        assert not any(c.startswith("ol_desk=") for c in r.headers.getall("Set-Cookie", []))
    assert (await http.get("/", allow_redirects=False)).headers["Location"] == "/login"


async def test_operator_without_the_permission_is_told_why(nc: Any, http: aiohttp.ClientSession) -> None:
    buckets = await bus.Buckets(nc.jetstream()).open()
    anna, _ = await bus.kv_get(buckets.accounts, "anna", OperatorAccount)
    assert anna is not None
    dora = OperatorAccount(id="dora", name="Dora", password_hash=anna.password_hash, roles=["operator"], permissions=[])
    await put(buckets.accounts, "dora", dora)
    done = await try_sign_in(http, "dora", "demo")
    assert done.status == 403
    assert "lacks the open-lines permission: ask an administrator" in await done.text()
    assert not any(c.startswith("ol_desk=") for c in done.headers.getall("Set-Cookie", []))
    assert (await http.get("/", allow_redirects=False)).status == 303
    assert (await http.get("/api/chats")).status == 401


async def test_an_admin_only_account_signs_in_and_lands_on_the_admin_pages(http: aiohttp.ClientSession) -> None:
    done = await try_sign_in(http, "admin", "demo")  # roles = ["admin"], no open-lines permission
    assert done.status == 303 and done.headers["Location"] == "/admin"
    # The workspace sends it on to /admin instead of a refusal; the chats API still refuses it, and says why.
    assert (await http.get("/", allow_redirects=False)).headers["Location"] == "/admin"
    assert (await http.get("/login", allow_redirects=False)).headers["Location"] == "/admin"
    chats = await http.get("/api/chats")
    assert chats.status == 403
    assert "lacks the open-lines permission" in (await chats.json())["detail"]


async def test_account_without_an_operator_role_is_told_why(nc: Any, http: aiohttp.ClientSession) -> None:
    buckets = await bus.Buckets(nc.jetstream()).open()
    anna, _ = await bus.kv_get(buckets.accounts, "anna", OperatorAccount)
    assert anna is not None
    await put(buckets.accounts, "carl", OperatorAccount(id="carl", name="Carl", password_hash=anna.password_hash, roles=[]))
    done = await try_sign_in(http, "carl", "demo")
    assert done.status == 403
    assert "neither the operator nor the supervisor role" in await done.text()


async def test_sign_in_form_without_its_token_is_refused(http: aiohttp.ClientSession) -> None:
    await http.get("/login")
    done = await http.post("/login", data={"login": "anna", "password": "demo"}, allow_redirects=False)
    assert done.status == 403
    forged = await http.post(
        "/login",
        data={"login": "anna", "password": "demo", "csrf_token": "x"},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    )
    assert forged.status == 403


async def test_sign_out_needs_the_token_and_clears_the_cookie(http: aiohttp.ClientSession) -> None:
    await try_sign_in(http, "anna", "demo")
    token = await csrf_of_workspace(http)
    refused = await http.post("/logout", allow_redirects=False)
    assert refused.status == 403
    done = await http.post("/logout", data={"csrf_token": token}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/login"
    assert (await http.get("/api/chats")).status == 401


# -- API guards -----------------------------------------------------------------------------------


async def test_api_refuses_without_cookie(http: aiohttp.ClientSession) -> None:
    for method, path in [("GET", "/api/chats"), ("POST", "/api/status"), ("POST", "/api/sessions/s1/close")]:
        r = await http.request(method, path, json={"status": "online"})
        assert r.status == 401, path
        assert (await r.json())["error"] == "unauthenticated"
    assert (await http.get("/ws")).status == 401


async def test_api_refuses_state_changes_without_the_csrf_header(http: aiohttp.ClientSession) -> None:
    await try_sign_in(http, "anna", "demo")
    token = await csrf_of_workspace(http)
    missing = await http.post("/api/status", json={"status": "online"})
    assert missing.status == 403 and (await missing.json())["error"] == "csrf"
    wrong = await http.post("/api/status", json={"status": "online"}, headers={"X-CSRF-Token": token[:-2] + "xx"})
    assert wrong.status == 403
    # Reads need no token.
    assert (await http.get("/api/chats")).status == 200


async def test_bad_bodies_get_400_and_413_with_the_reason(http: aiohttp.ClientSession) -> None:
    await try_sign_in(http, "anna", "demo")
    h = {"X-CSRF-Token": await csrf_of_workspace(http)}
    cases: list[tuple[str, Any, int, str]] = [
        ("/api/status", b"{not json", 400, "not valid JSON"),
        ("/api/status", [1], 400, "JSON object"),
        ("/api/status", {"status": "asleep"}, 400, "online, away, offline"),
        ("/api/sessions/s1/reply", {"client_msg_id": "m1"}, 400, "text"),
        ("/api/sessions/s1/reply", {"text": "   ", "client_msg_id": "m1"}, 400, "text"),
        ("/api/sessions/s1/reply", {"text": "hi"}, 400, "client_msg_id"),
        ("/api/sessions/s1/reply", {"text": "x" * 4001, "client_msg_id": "m1"}, 413, "at most 4000"),
    ]
    for path, body, status, reason in cases:
        if isinstance(body, bytes):
            r = await http.post(path, data=body, headers={**h, "Content-Type": "application/json"})
        else:
            r = await http.post(path, json=body, headers=h)
        assert r.status == status, (path, body, await r.text())
        assert reason in (await r.json())["detail"]


async def test_commands_answer_503_when_no_router_listens(http: aiohttp.ClientSession) -> None:
    await try_sign_in(http, "anna", "demo")
    h = {"X-CSRF-Token": await csrf_of_workspace(http)}
    r = await http.post("/api/status", json={"status": "online"}, headers=h)
    assert r.status == 503
    assert await r.json() == {"error": "unavailable", "detail": "router unavailable: no router is running; nothing was done"}


async def test_websocket_from_another_origin_is_refused(http: aiohttp.ClientSession) -> None:
    await try_sign_in(http, "anna", "demo")
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect("/ws", headers={"Origin": "https://evil.example"})
    assert err.value.status == 403


# -- reads from KV ----------------------------------------------------------------------------------


async def seed_chats(nc: Any) -> None:
    buckets = await bus.Buckets(nc.jetstream()).open()
    await put(buckets.sessions, "s-mine", session_record("s-mine", "anna", "answered", "Maria"))
    await put(buckets.sessions, "s-offered", session_record("s-offered", "anna", "assigned", "Oleg"))
    await put(buckets.sessions, "s-closed", session_record("s-closed", "anna", "closed"))
    await put(buckets.sessions, "s-boris", session_record("s-boris", "boris", "answered"))
    await put(buckets.operators, "anna", OperatorState(id="anna", status="away", sessions=["s-mine", "s-offered", "s-closed"]))
    await put(buckets.operators, "boris", OperatorState(id="boris", status="online", sessions=["s-boris"]))


async def test_snapshot_lists_my_open_chats_from_kv(nc: Any, http: aiohttp.ClientSession) -> None:
    await seed_chats(nc)
    await try_sign_in(http, "anna", "demo")
    async with http.ws_connect("/ws") as ws:
        snap = await ws.receive_json(timeout=scaled(5))
    assert snap["type"] == "snapshot"
    assert snap["operator"] == {"id": "anna", "status": "away"}
    assert [c["id"] for c in snap["chats"]] == ["s-mine", "s-offered"]
    assert snap["chats"][0]["client_name"] == "Maria" and snap["chats"][0]["line_name"] == "Customer support"
    chats = await (await http.get("/api/chats")).json()
    assert [c["id"] for c in chats["chats"]] == ["s-mine", "s-offered"]


async def test_history_of_my_session_and_not_of_someone_elses(
    nc: Any, http: aiohttp.ClientSession, desk: Service[Settings]
) -> None:
    await seed_chats(nc)
    js = nc.jetstream()
    entry = HistoryEntry(id="h1", session_id="s-mine", direction="in", text="Hello?", at=T0)
    await js.publish(subjects.history("s-mine"), encode(entry), headers={MSG_ID_HEADER: "h1"})
    await try_sign_in(http, "anna", "demo")
    mine = await http.get("/api/sessions/s-mine/history")
    assert mine.status == 200
    assert [e["text"] for e in (await mine.json())["entries"]] == ["Hello?"]
    # Anna is a supervisor: she may read Boris's live chat (before intercepting it).
    assert (await http.get("/api/sessions/s-boris/history")).status == 200
    assert (await http.get("/api/sessions/s-boris/client")).status == 200
    # Boris is in the queue of the chat's line: he may read it (his "All my lines" view lists it),
    # but not a chat of a line he is not on.
    elsewhere = msgspec.structs.replace(session_record("s-sales", "anna", "answered", "Sven"), line_id="sales")
    await put((await bus.Buckets(js).open()).sessions, "s-sales", elsewhere)
    async with http_session(desk) as boris:
        await try_sign_in(boris, "boris", "demo")
        assert (await boris.get("/api/sessions/s-mine/history")).status == 200
        others = await boris.get("/api/sessions/s-sales/history")
        assert others.status == 403 and (await others.json())["error"] == "forbidden"
        assert (await boris.get("/api/sessions/s-sales/client")).status == 403
    assert (await http.get("/api/sessions/nope/history")).status == 404
    assert (await http.get("/api/sessions/bad.id/history")).status == 404


# -- live push ------------------------------------------------------------------------------------


async def test_events_and_transcript_reach_the_operator_holding_the_chat(nc: Any, http: aiohttp.ClientSession) -> None:
    await seed_chats(nc)
    js = nc.jetstream()
    buckets = await bus.Buckets(js).open()
    await try_sign_in(http, "anna", "demo")
    async with http.ws_connect("/ws") as ws:
        assert (await ws.receive_json(timeout=scaled(5)))["type"] == "snapshot"

        # The router writes KV first, then publishes the event.
        await put(buckets.sessions, "s-new", session_record("s-new", "anna", "assigned", "Nina"))
        event = SessionEvent(id="e1", kind="session_assigned", at=T0, session_id="s-new", operator_id="anna")
        await js.publish(subjects.event("session_assigned"), encode(event))
        chat = await ws.receive_json(timeout=scaled(5))
        assert chat["type"] == "chat" and chat["chat"]["id"] == "s-new" and chat["chat"]["client_name"] == "Nina"

        entry = HistoryEntry(id="h2", session_id="s-new", direction="in", text="Are you there?", at=T0)
        await js.publish(subjects.history("s-new"), encode(entry))
        msg = await ws.receive_json(timeout=scaled(5))
        assert msg == {"type": "message", **msgspec.to_builtins(entry)}

        # A chat of boris is not pushed to anna.
        other = HistoryEntry(id="h3", session_id="s-boris", direction="in", text="for boris", at=T0)
        await js.publish(subjects.history("s-boris"), encode(other))

        await put(buckets.sessions, "s-new", session_record("s-new", "anna", "closed"))
        closed = SessionEvent(id="e2", kind="session_closed", at=T0, session_id="s-new", operator_id="anna")
        await js.publish(subjects.event("session_closed"), encode(closed))
        assert await ws.receive_json(timeout=scaled(5)) == {"type": "closed", "session_id": "s-new", "reason": "closed"}

        await put(buckets.operators, "anna", OperatorState(id="anna", status="online"))
        status = SessionEvent(id="e3", kind="operator_status", at=T0, operator_id="anna")
        await js.publish(subjects.event("operator_status"), encode(status))
        assert await ws.receive_json(timeout=scaled(5)) == {"type": "status", "status": "online"}


async def test_a_chat_given_to_another_operator_leaves_my_list(nc: Any, http: aiohttp.ClientSession) -> None:
    await seed_chats(nc)
    js = nc.jetstream()
    buckets = await bus.Buckets(js).open()
    await try_sign_in(http, "anna", "demo")
    async with http.ws_connect("/ws") as ws:
        snap = await ws.receive_json(timeout=scaled(5))
        assert "s-offered" in [c["id"] for c in snap["chats"]]
        await put(buckets.sessions, "s-offered", session_record("s-offered", "boris", "assigned"))
        event = SessionEvent(id="e9", kind="session_assigned", at=T0, session_id="s-offered", operator_id="boris")
        await js.publish(subjects.event("session_assigned"), encode(event))
        assert await ws.receive_json(timeout=scaled(5)) == {"type": "closed", "session_id": "s-offered", "reason": "reassigned"}


async def test_stopping_the_desk_closes_sockets_so_pages_reconnect(desk: Service[Settings], http: aiohttp.ClientSession) -> None:
    await try_sign_in(http, "anna", "demo")
    ws = await http.ws_connect("/ws")
    assert (await ws.receive_json(timeout=scaled(5)))["type"] == "snapshot"
    await desk.stop()
    msg = await ws.receive(timeout=scaled(5))
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


async def test_readyz_says_ready_when_subscribed(http: aiohttp.ClientSession) -> None:
    r = await http.get("/readyz")
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "ready"
