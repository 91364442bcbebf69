"""The desk's chat actions (skip, transfer, pin, spam, files) and its sign-in guards over real HTTP,
with the real router and two desk replicas on one real nats-server."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from support import client_writes, last_timer_set, running_router, session_by_id
from support.desk import http_session, running_desk, sign_in, try_sign_in
from support.timing import scaled, wait_for

from desk.settings import Settings
from openlines import bus, subjects
from openlines.apply import apply
from openlines.envelopes import HistoryEntry, Outbound
from openlines.lines import LineConfig, QueueConfig, load
from openlines.runner import Service
from openlines.state import ClientRecord, client_key
from router.timers import Timer

ROOT = Path(__file__).resolve().parents[3]
SECRET = "actions-test-cookie-secret-0123-Kq7Zt9Wm3xRv"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b2f1"
    "a30000000049454e44ae426082"
)

Launch = Callable[..., Awaitable[Service[Settings]]]


@pytest.fixture
async def router(nc: Any, nats_server: Any) -> AsyncIterator[None]:
    cfg = load(ROOT / "deploy/lines.example.toml")
    support = msgspec.structs.replace(cfg.lines[0], quick_answers=["Hello!", "One moment, please."])
    sales = LineConfig(id="sales", name="Sales", queue=QueueConfig(operators=["boris"]))
    await apply(await bus.Buckets(nc.jetstream()).open(), msgspec.structs.replace(cfg, lines=[support, sales]))
    async with running_router(nats_server.url):
        yield


@pytest.fixture
async def desks(nats_server: Any, router: None) -> AsyncIterator[Launch]:
    """Starts desk replicas (same secret, same NATS) with settings overrides."""
    async with AsyncExitStack() as started:

        async def start(**overrides: Any) -> Service[Settings]:
            return await started.enter_async_context(running_desk(nats_server.url, SECRET, **overrides))

        yield start


@pytest.fixture
async def desk(desks: Launch) -> Service[Settings]:
    return await desks()


async def a_chat_of(http: aiohttp.ClientSession, h: dict[str, str], nc: Any, visitor: str) -> str:
    """The operator goes online, a client writes, the operator accepts: the session id."""
    assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
    await client_writes(nc, visitor, f"in-{visitor}", "Hello")

    async def offered() -> str | None:
        chats = (await (await http.get("/api/chats")).json())["chats"]
        return next((c for c in chats if c["status"] == "assigned"), None)

    chat = await wait_for(offered, what="the chat offered to the operator")
    # What the page counts the offer down from: when it was offered, and the line's no-answer timeout.
    assert chat["wait_seconds"] == 45 and chat["assigned_at"]
    sid: str = chat["id"]
    assert (await http.post(f"/api/sessions/{sid}/accept", headers=h)).status == 200
    return sid


async def outbound_of(nc: Any, visitor: str) -> list[Outbound]:
    subject = subjects.outbound("webchat", "demo", subjects.chat_key("webchat", "demo", visitor))
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_OUT, subject)
    return [msgspec.json.decode(d, type=Outbound) for _, d in rows]


async def sent(nc: Any, visitor: str, out_id: str) -> Outbound | None:
    return next((o for o in await outbound_of(nc, visitor) if o.id == out_id), None)


async def transcript_of(nc: Any, sid: str) -> list[HistoryEntry]:
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_HIST, subjects.history(sid))
    return [msgspec.json.decode(d, type=HistoryEntry) for _, d in rows]


async def idle_timer_of(nc: Any, sid: str) -> Timer:
    """The newest auto-close timer the router set for the session (its token is the last message's time)."""
    data = await last_timer_set(nc, "idle", sid)
    assert data is not None, f"no auto-close timer waits for {sid}"
    return msgspec.json.decode(data, type=Timer)


def file_form(name: str, data: bytes, mime: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type=mime)
    return form


# -- chat actions -----------------------------------------------------------------------------------


async def test_transfer_to_a_line_and_the_bad_requests(nc: Any, desk: Service[Settings]) -> None:
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-line")
        for body, status in (
            ({"to_operator": "boris", "to_line": "sales"}, 400),
            ({}, 400),
            ({"to_line": "no.such"}, 400),
            ({"to_line": "nowhere"}, 404),
            ({"to_operator": "boris"}, 409),  # offline: the router refuses, the desk says why
        ):
            r = await http.post(f"/api/sessions/{sid}/transfer", json=body, headers=h)
            assert r.status == status, (body, await r.text())
            assert set(await r.json()) == {"error", "detail"}
        assert (await session_by_id(nc, sid)).operator_id == "anna"  # nothing changed

        r = await http.post(f"/api/sessions/{sid}/transfer", json={"to_line": "sales"}, headers=h)
        assert r.status == 200, await r.text()
        moved = await session_by_id(nc, sid)
        assert moved.line_id == "sales" and moved.operator_id != "anna"
        assert sid not in [c["id"] for c in (await (await http.get("/api/chats")).json())["chats"]]


async def test_pin_and_unpin(nc: Any, desk: Service[Settings]) -> None:
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-pin")
        assert (await http.post(f"/api/sessions/{sid}/pin", json={"pinned": "yes"}, headers=h)).status == 400
        r = await http.post(f"/api/sessions/{sid}/pin", json={"pinned": True}, headers=h)
        assert r.status == 200 and (await r.json())["session"]["pinned"] is True
        assert (await session_by_id(nc, sid)).pinned
        r = await http.post(f"/api/sessions/{sid}/pin", json={"pinned": False}, headers=h)
        assert r.status == 200 and not (await session_by_id(nc, sid)).pinned
        assert (await http.post(f"/api/sessions/{sid}/pin", json={"pinned": True})).status == 403  # no CSRF header


async def test_spam_closes_the_chat_and_marks_the_client(nc: Any, desk: Service[Settings]) -> None:
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-spam")
        r = await http.post(f"/api/sessions/{sid}/spam", headers=h)
        assert r.status == 200, await r.text()
        closed = await session_by_id(nc, sid)
        assert closed.status == "closed" and closed.close_reason == "spam"
        buckets = await bus.Buckets(nc.jetstream()).open()
        record, _ = await bus.kv_get(buckets.clients, client_key("webchat", "demo", closed.chat_key), ClientRecord)
        assert record is not None and record.spam


async def test_skip_of_an_answered_chat_is_refused_with_the_reason(nc: Any, desk: Service[Settings]) -> None:
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-skip")
        r = await http.post(f"/api/sessions/{sid}/skip", headers=h)
        assert r.status == 409 and "transfer" in (await r.json())["detail"]


async def test_directory_lists_lines_with_quick_answers_and_other_operators(desk: Service[Settings]) -> None:
    async with http_session(desk) as http:
        await sign_in(http, "anna")
        data = await (await http.get("/api/directory")).json()
        assert data["lines"] == [
            {"id": "support", "name": "Customer support", "wait_seconds": 45, "quick_answers": ["Hello!", "One moment, please."]},
            {"id": "sales", "name": "Sales", "wait_seconds": 45, "quick_answers": []},
        ]
        # Not Anna herself, not the admin account that cannot take chats.
        assert data["operators"] == [{"id": "boris", "name": "Boris Ivanov", "status": "offline"}]


# -- files ----------------------------------------------------------------------------------------


async def test_a_file_goes_to_the_channel_and_the_transcript_once(nc: Any, desks: Launch) -> None:
    # The test talks plain http to 127.0.0.1: with an https public URL the cookies would be Secure.
    desk = await desks(desk_public_url="https://desk.example.com/", cookie_secure=False)
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-file")
        up = await http.post(
            f"/api/sessions/{sid}/files", data=file_form("../../price list.pdf", b"%PDF-1.4 ...", "application/pdf"), headers=h
        )
        assert up.status == 200, await up.text()
        file = (await up.json())["file"]
        assert file["name"] == "price list.pdf" and file["kind"] == "file" and file["size"] == 12

        # Text and file are one reply command: the router sends them as one message, and a retry is that same message.
        body = {"text": "Here is the price list", "client_msg_id": "files-1", "files": [file["id"]]}
        ids = set()
        for _ in range(2):
            r = await http.post(f"/api/sessions/{sid}/reply", json=body, headers=h)
            assert r.status == 200, await r.text()
            ids.add((await r.json())["message_id"])
        assert ids == {f"out:{sid}:files-1"}
        outs = await wait_for(lambda: outbound_of(nc, "v-file"), what="the reply on ol.out")
        mine = [o for o in outs if not o.auto]
        assert [(o.id, o.text, len(o.attachments)) for o in mine] == [(f"out:{sid}:files-1", "Here is the price list", 1)]
        att = mine[0].attachments[0]
        assert att.kind == "file" and att.name == "price list.pdf" and att.mime == "application/pdf" and att.size == 12
        assert att.url == f"https://desk.example.com/files/{sid}/{file['id']}/price%20list.pdf"
        assert mine[0].operator_id == "anna" and mine[0].operator_name == "Anna Petrova"
        entries = await transcript_of(nc, sid)
        assert [(e.text, [a.name for a in e.attachments]) for e in entries if e.direction == "out" and e.author_id == "anna"] == [
            ("Here is the price list", ["price list.pdf"])
        ]
        after_text = await session_by_id(nc, sid)

        # Files alone are a reply too: the chat's last message moves, so the auto-close timer starts again.
        up = await http.post(f"/api/sessions/{sid}/files", data=file_form("label.png", PNG, "image/png"), headers=h)
        png = (await up.json())["file"]
        r = await http.post(
            f"/api/sessions/{sid}/reply", json={"text": "", "client_msg_id": "files-2", "files": [png["id"]]}, headers=h
        )
        assert r.status == 200, await r.text()
        alone = await wait_for(lambda: sent(nc, "v-file", f"out:{sid}:files-2"), what="the file alone on ol.out")
        assert [(a.kind, a.name) for a in alone.attachments] == [("image", "label.png")] and alone.text == ""
        touched = await session_by_id(nc, sid)
        assert touched.last_message_at is not None and after_text.last_message_at is not None
        assert touched.last_message_at > after_text.last_message_at
        timer = await idle_timer_of(nc, sid)
        assert timer.token == str(touched.last_message_at.timestamp())

        # The desk's link is for operators who may read the chat (the client's channel gets the file by reference),
        # and never runs as a page.
        async with aiohttp.ClientSession() as anyone:
            assert (await anyone.get(f"http://127.0.0.1:{desk.port}/files/{sid}/{file['id']}/x")).status == 401
        got = await http.get(f"/files/{sid}/{file['id']}/x")
        assert got.status == 200 and await got.read() == b"%PDF-1.4 ..."
        assert got.headers["Content-Type"] == "application/pdf"
        assert got.headers["Content-Disposition"] == "attachment; filename*=UTF-8''price%20list.pdf"
        assert got.headers["Content-Security-Policy"].startswith("sandbox")
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert (await http.get(f"/files/{sid}/AAAAAAAAAAAAAAAAAAAAAAAA/x")).status == 404
        assert (await http.get(f"/files/other/{file['id']}/x")).status == 404
        # The transcript's reference opens it too, for the same operators.
        ref = f"ol-desk-files:{sid}/{file['id']}"
        by_ref = await http.get(f"/api/sessions/{sid}/file", params={"ref": ref, "download": "1"})
        assert by_ref.status == 200 and await by_ref.read() == b"%PDF-1.4 ..."


async def test_files_are_kept_for_the_configured_age_then_nats_deletes_them(nc: Any, desks: Launch) -> None:
    js = nc.jetstream()
    stream = f"OBJ_{subjects.OBJ_DESK_FILES}"
    await desks()
    assert (await js.stream_info(stream)).config.max_age == 90 * 86400  # the default: 90 days

    # A replica with another age brings the store to it; here two seconds, so the test sees a file go.
    desk = await desks(files_max_age_days=2 / 86400)
    assert (await js.stream_info(stream)).config.max_age == 2
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-old-file")
        before = (await js.stream_info(stream)).state.last_seq
        form = file_form("old.pdf", b"%PDF-1.4 old", "application/pdf")
        up = await http.post(f"/api/sessions/{sid}/files", data=form, headers=h)
        assert up.status == 200, await up.text()
        file = (await up.json())["file"]
        assert (await js.stream_info(stream)).state.last_seq > before  # stored (metadata and chunk)

        async def gone() -> bool:
            return (await js.stream_info(stream)).state.messages == 0

        await wait_for(gone, timeout=60, what="NATS deleting the file past its age")
        assert (await http.get(f"/files/{sid}/{file['id']}/old.pdf")).status == 404
        body = {"text": "", "client_msg_id": "old-1", "files": [file["id"]]}
        r = await http.post(f"/api/sessions/{sid}/reply", json=body, headers=h)
        assert r.status == 400 and "upload it again" in (await r.json())["detail"]
        assert not [o for o in await outbound_of(nc, "v-old-file") if o.attachments]


def test_the_age_of_files_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="OPENLINES_FILES_MAX_AGE_DAYS"):
        Settings(cookie_secret=SECRET, files_max_age_days=-1)


async def test_uploads_that_are_refused_say_why(nc: Any, desks: Launch) -> None:
    desk = await desks(max_upload_bytes=1000)
    async with http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid = await a_chat_of(http, h, nc, "v-bad-file")
        cases = [
            (file_form("page.html", b"<script>alert(1)</script>", "text/html"), 415, "cannot be sent"),
            (file_form("fake.png", b"GIF89a not a png", "image/png"), 415, "its content is not"),
            (file_form("big.pdf", b"%PDF" + b"x" * 2000, "application/pdf"), 413, "over 1000 bytes"),
            (file_form("empty.txt", b"", "text/plain"), 400, "empty"),
        ]
        for form, status, why in cases:
            r = await http.post(f"/api/sessions/{sid}/files", data=form, headers=h)
            assert r.status == status, await r.text()
            assert why in (await r.json())["detail"]
        r = await http.post(f"/api/sessions/{sid}/files", json={"file": "x"}, headers=h)
        assert r.status == 400 and "multipart" in (await r.json())["detail"]
        r = await http.post(f"/api/sessions/{sid}/files", data=file_form("a.png", PNG, "image/png"))
        assert r.status == 403  # no CSRF header
        r = await http.post(f"/api/sessions/{sid}/reply", json={"text": "", "client_msg_id": "f2", "files": ["nope"]}, headers=h)
        assert r.status == 400 and "upload it again" in (await r.json())["detail"]
        r = await http.post(f"/api/sessions/{sid}/reply", json={"text": "", "client_msg_id": "f3"}, headers=h)
        assert r.status == 400
        assert not [o for o in await outbound_of(nc, "v-bad-file") if o.attachments]

    # Someone else's chat: no upload.
    async with http_session(desk) as boris:
        hb = await sign_in(boris, "boris")
        r = await boris.post(f"/api/sessions/{sid}/files", data=file_form("a.png", PNG, "image/png"), headers=hb)
        assert r.status == 403 and "your own open chats" in (await r.json())["detail"]


# -- sign-in guards -------------------------------------------------------------------------------


async def test_failed_sign_ins_are_limited_per_login_and_address_on_every_replica(desks: Launch) -> None:
    one, two = await desks(), await desks()
    async with http_session(one) as a, http_session(two) as b:
        for _ in range(5):
            assert (await try_sign_in(a, "boris", "wrong")).status == 401
        # The sixth try, even with the right password and on the other replica, waits.
        limited = await try_sign_in(b, "boris", "demo")
        assert limited.status == 429
        assert 0 < int(limited.headers["Retry-After"]) <= 900
        assert re.search(r"Too many failed sign-ins\. Try again in \d+ minutes?\.", await limited.text())
        assert not any(c.startswith("ol_desk=") for c in limited.headers.getall("Set-Cookie", []))
        # Another login from the same address is not blocked by Boris's failures.
        assert (await try_sign_in(b, "anna", "demo")).status == 303


async def test_a_right_password_clears_the_logins_failures(desk: Service[Settings]) -> None:
    async with http_session(desk) as http:
        for _ in range(4):
            assert (await try_sign_in(http, "anna", "wrong")).status == 401
        assert (await try_sign_in(http, "anna")).status == 303
        http.cookie_jar.clear()
        for _ in range(4):
            assert (await try_sign_in(http, "anna", "wrong")).status == 401
        assert (await try_sign_in(http, "anna")).status == 303


async def test_failed_sign_ins_are_limited_per_client_address(desks: Launch) -> None:
    desk = await desks(login_failures_per_address=3)
    async with http_session(desk) as http:
        for login in ("x1", "x2", "x3"):
            assert (await try_sign_in(http, login, "guess")).status == 401
        r = await try_sign_in(http, "anna")
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0


async def test_sign_out_revokes_the_cookie_on_every_replica_and_closes_live_pages(desks: Launch) -> None:
    one, two = await desks(), await desks()
    async with http_session(one) as http:
        h = await sign_in(http, "anna")
        cookie = next(c for c in http.cookie_jar if c.key == "ol_desk").value
    async with http_session(two) as copy:
        copy.cookie_jar.update_cookies({"ol_desk": cookie})
        assert (await copy.get("/api/chats")).status == 200
        async with copy.ws_connect("/ws", headers={"Origin": f"http://127.0.0.1:{two.port}"}) as ws:
            assert (await ws.receive_json(timeout=scaled(5)))["type"] == "snapshot"
            async with http_session(one) as again:
                again.cookie_jar.update_cookies({"ol_desk": cookie})
                out = await again.post("/logout", data={"csrf_token": h["X-CSRF-Token"]}, allow_redirects=False)
                assert out.status == 303 and out.headers["Location"] == "/login"
            closing = await ws.receive(timeout=scaled(10))
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        # The copied cookie is worth nothing now, on either replica.
        assert (await copy.get("/api/chats")).status == 401
        assert (await copy.get("/", allow_redirects=False)).headers["Location"] == "/login"
    async with http_session(one) as http:
        http.cookie_jar.update_cookies({"ol_desk": cookie})
        assert (await http.get("/api/chats")).status == 401
        # Signing in again works and gives a new, valid cookie.
        await sign_in(http, "anna")
        assert (await http.get("/api/chats")).status == 200
