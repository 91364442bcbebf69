"""Clients' files in the desk: served by reference to operators who may read the chat, never as a page.

A client's message names its files by reference into a gateway's object store
(here the widget's, as the webchat gateway writes it). The desk serves a file
only when the reference is one of that session's attachments and the operator
may read the session; images, audio and video the browser shows inline, the
rest is a download typed ``application/octet-stream``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from support import apply_lines, leave_line, running_router
from support.desk import http_session, running_desk, sign_in
from support.timing import wait_for

from openlines import files, subjects
from openlines.envelopes import MSG_ID_HEADER, Attachment, ClientProfile, Inbound, encode, utcnow

ROOT = Path(__file__).resolve().parents[3]
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b2f1"
    "a30000000049454e44ae426082"
)
OGG = b"OggS\x00\x02" + bytes(60)
HTML = b"<html><script>document.cookie</script></html>"
VISITOR = "visitor-files-0001"


@pytest.fixture
async def desk(nc: Any, nats_server: Any) -> AsyncIterator[Any]:
    await apply_lines(nc, (ROOT / "deploy/lines.example.toml").read_text())
    async with running_router(nats_server.url), running_desk(nats_server.url) as svc:
        yield svc


async def stored(nc: Any, name: str, mime: str, data: bytes) -> Attachment:
    """A file as the webchat gateway keeps a visitor's upload."""
    store = await files.open_store(nc.jetstream(), subjects.OBJ_WEBCHAT_FILES, description="test")
    key = f"demo/{VISITOR}/{name.replace('.', '-')}-0123456789"
    await files.put_once(store, key, data, files.Meta(name=name, mime=mime))
    return Attachment(
        kind=files.kind_of(mime), name=name, mime=mime, size=len(data), ref=files.ref(subjects.OBJ_WEBCHAT_FILES, key)
    )


async def test_a_clients_files_are_served_to_operators_who_may_read_the_chat_and_to_nobody_else(desk: Any, nc: Any) -> None:
    photo = await stored(nc, "photo.png", "image/png", PNG)
    page = await stored(nc, "page.html", "text/html", HTML)
    voice = await stored(nc, "voice.ogg", "audio/ogg", OGG)
    elsewhere = await stored(nc, "other.png", "image/png", PNG)  # kept, but not in this chat
    async with http_session(desk) as anna, http_session(desk) as boris, aiohttp.ClientSession() as anyone:
        h = await sign_in(anna, "anna")
        assert (await anna.post("/api/status", json={"status": "online"}, headers=h)).status == 200
        env = Inbound(
            id=f"webchat:demo:{VISITOR}:m1",
            channel="webchat",
            account="demo",
            chat_id=VISITOR,
            user_id=VISITOR,
            profile=ClientProfile(name="Maria"),
            text="here they are",
            attachments=[photo, page, voice],
            received_at=utcnow(),
        )
        await nc.jetstream().publish(subjects.inbound("webchat", "demo", VISITOR), encode(env), headers={MSG_ID_HEADER: env.id})

        async def offered() -> str | None:
            chats = (await (await anna.get("/api/chats")).json())["chats"]
            return next((c["id"] for c in chats if c["status"] == "assigned"), None)

        sid = await wait_for(offered, what="the chat offered to anna")
        entries = (await (await anna.get(f"/api/sessions/{sid}/history")).json())["entries"]
        assert [a["ref"] for e in entries for a in e.get("attachments", [])] == [photo.ref, page.ref, voice.ref]

        def url(att: Attachment, **more: str) -> str:
            return f"/api/sessions/{sid}/file?" + urlencode({"ref": att.ref, **more})

        got = await anna.get(url(photo))
        assert got.status == 200 and await got.read() == PNG
        assert (got.headers["Content-Type"], got.headers["Content-Disposition"]) == (
            "image/png",
            "inline; filename*=UTF-8''photo.png",
        )
        assert got.headers["Content-Security-Policy"].startswith("sandbox") and got.headers["X-Content-Type-Options"] == "nosniff"
        down = await anna.get(url(photo, download="1"))
        assert down.headers["Content-Disposition"] == "attachment; filename*=UTF-8''photo.png"
        played = await anna.get(url(voice))
        assert played.status == 200 and played.headers["Content-Type"] == "audio/ogg"
        assert played.headers["Content-Disposition"].startswith("inline")
        # What a client calls text/html is never served as a page: a download of bytes.
        html = await anna.get(url(page))
        assert html.status == 200 and await html.read() == HTML
        assert html.headers["Content-Type"] == "application/octet-stream"
        assert html.headers["Content-Disposition"] == "attachment; filename*=UTF-8''page.html"

        # Only this chat's files, only for those who may read it.
        assert (await anna.get(url(elsewhere))).status == 404
        assert (await anna.get(f"/api/sessions/{sid}/file", params={"ref": "ol-lines:support"})).status == 404
        assert (await anna.get(f"/api/sessions/{sid}/file", params={"ref": "../../etc/passwd"})).status == 404
        assert (
            await anyone.get(f"http://127.0.0.1:{desk.port}/api/sessions/{sid}/file", params={"ref": photo.ref})
        ).status == 401
        await sign_in(boris, "boris")  # an operator of the line reads its chats (the views list them), files too
        assert (await boris.get(url(photo))).status == 200
        await leave_line(nc, "boris", "support")  # off the line: nothing of it any more

        async def refused() -> bool:
            return (await boris.get(url(photo))).status == 403

        await wait_for(refused, what="the file refused to an operator off the line")

        # A file past its age (deleted by NATS) is said to be gone.
        await (await nc.jetstream().object_store(subjects.OBJ_WEBCHAT_FILES)).delete(files.parse_ref(voice.ref)[1])  # type: ignore[index]
        gone = await anna.get(url(voice))
        assert gone.status == 404 and "no longer kept" in (await gone.json())["detail"]
