"""Files both ways through the webchat gateway: a visitor's uploads (with their limits) and the links the widget opens."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from support.servers import creds
from support.timing import wait_for
from support.webchat import bind_widget_accounts, open_visitor, recv

from desk.files import FileStore
from gateway_webchat import Settings, setup
from gateway_webchat.service import WEBCHAT
from gateway_webchat.token import VisitorToken, sign
from openlines import bus, files, runner, subjects
from openlines.envelopes import MSG_ID_HEADER, Inbound, Outbound, decoder, encode

SECRET = "files-secret-0123456789abcdef-Kq7Zt9Wm3xRv"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(40)
PDF = b"%PDF-1.4 my receipt"


@pytest.fixture
async def svc(nats_server: Any, nc: Any) -> AsyncIterator[runner.Service[Settings]]:
    await bind_widget_accounts(nc)
    settings = Settings(
        nats_url=nats_server.url,
        http_port=0,
        webchat_secret=SECRET,
        shutdown_timeout=3.0,
        webchat_upload_max_bytes=4096,
        visitor_uploads_per_minute=1,
        visitor_upload_burst=5,
        **creds("gateway-webchat"),
    )
    service = await runner.launch("gateway-webchat", settings, setup, first_attempts=5)
    await wait_for(lambda: service.app[WEBCHAT].consumer.ready() is None, what="outbound consumer")
    yield service
    await service.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(svc: runner.Service[Settings]) -> str:
    return f"http://127.0.0.1:{svc.port}"


async def upload(
    http: aiohttp.ClientSession, svc: Any, token: str | None, name: str, mime: str, data: bytes, account: str = "demo"
) -> tuple[int, dict[str, Any], Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type=mime)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.post(f"{base(svc)}/files/{account}", data=form, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def inbound(js: Any, envelope_id: str) -> list[Inbound]:
    dec = decoder(Inbound)
    rows = await bus.read_subject(js, subjects.STREAM_IN, subjects.inbound_account("webchat", "demo"))
    return [e for e in (dec.decode(d) for _, d in rows) if e.id == envelope_id]


async def test_a_visitors_file_is_uploaded_sent_with_a_caption_and_opened_by_its_link(svc: Any, http: Any, nc: Any) -> None:
    ws, welcome = await open_visitor(http, base(svc))
    assert welcome["max_upload"] == 4096
    status, body, headers = await upload(http, svc, welcome["token"], "../receipt.pdf", "application/pdf", PDF)
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == "*"
    file = body["file"]
    assert (file["name"], file["mime"], file["size"], file["kind"]) == ("receipt.pdf", "application/pdf", len(PDF), "file")

    await ws.send_json({"type": "message", "id": "m-file", "text": "my receipt", "files": [file["id"]]})
    assert (await recv(ws))["type"] == "ack"
    [env] = await wait_for(lambda: inbound(nc.jetstream(), f"webchat:demo:{welcome['visitor']}:m-file"), what="published")
    [att] = env.attachments
    assert env.text == "my receipt"
    assert att.ref == f"{subjects.OBJ_WEBCHAT_FILES}:demo/{welcome['visitor']}/{file['id']}"
    assert (att.kind, att.name, att.mime, att.size) == ("file", "receipt.pdf", "application/pdf", len(PDF))
    assert (await files.Reader(nc.jetstream()).get(att.ref)).data == PDF

    # The link the upload answered opens it (a download: not something a browser shows).
    async with http.get(base(svc) + file["url"]) as got:
        assert got.status == 200 and await got.read() == PDF
        assert got.headers["Content-Type"] == "application/octet-stream"
        assert got.headers["Content-Disposition"] == "attachment; filename*=UTF-8''receipt.pdf"
        assert got.headers["Content-Security-Policy"].startswith("sandbox")
    await ws.close()


async def test_an_operators_file_reaches_the_widget_as_a_link_this_gateway_signed(svc: Any, http: Any, nc: Any) -> None:
    ws, welcome = await open_visitor(http, base(svc))
    visitor = welcome["visitor"]
    store = await FileStore.open(nc.jetstream())
    label = await store.put("s-web", "label.png", "image/png", PNG)
    out = Outbound(
        id="out-web-1",
        session_id="s-web",
        channel="webchat",
        account="demo",
        chat_id=visitor,
        text="your label",
        attachments=[label.attachment("https://desk.example.com")],
        created_at=datetime.now(UTC),
    )
    subject = subjects.outbound("webchat", "demo", subjects.chat_key("webchat", "demo", visitor))
    await nc.jetstream().publish(subject, encode(out), headers={MSG_ID_HEADER: out.id})
    reply = await recv(ws)
    [att] = reply["attachments"]
    assert (att["kind"], att["name"], att["mime"], att["size"]) == ("image", "label.png", "image/png", len(PNG))
    assert att["url"].startswith("/files/") and "desk.example.com" not in att["url"]  # never the desk's address
    async with http.get(base(svc) + att["url"]) as got:
        assert got.status == 200 and await got.read() == PNG
        assert got.headers["Content-Type"] == "image/png" and got.headers["Content-Disposition"].startswith("inline")
    # A changed link opens nothing.
    async with http.get(base(svc) + att["url"].replace("/files/", "/files/x", 1)) as bad:
        assert bad.status == 403
    # Replayed to a reconnecting widget with a fresh link to the same file.
    ws2, _ = await open_visitor(http, base(svc), token=welcome["token"])
    replayed = await recv(ws2)
    assert replayed["id"] == "out-web-1" and replayed["attachments"][0]["url"].startswith("/files/")
    await ws.close()
    await ws2.close()


async def test_uploads_are_refused_with_the_reason_and_nothing_is_stored(svc: Any, http: Any, nc: Any) -> None:
    ws, welcome = await open_visitor(http, base(svc))
    token = welcome["token"]
    stale = sign(SECRET, VisitorToken(account="demo", visitor=welcome["visitor"], issued_at=int(time.time()) - 2 * 86400))
    cases = [
        (None, "a.pdf", "application/pdf", PDF, 401, "bad_token"),
        (stale, "a.pdf", "application/pdf", PDF, 401, "token_expired"),  # the widget reconnects for a fresh one
        ("v1.demo.forged", "a.pdf", "application/pdf", PDF, 401, "bad_token"),
        (token, "page.html", "text/html", b"<script>alert(1)</script>", 415, "unsupported"),
        (token, "fake.png", "image/png", b"GIF89a not a png", 415, "unsupported"),
        (token, "big.pdf", "application/pdf", PDF + bytes(5000), 413, "too_large"),
        (token, "empty.pdf", "application/pdf", b"", 400, "bad_request"),
    ]
    for tok, name, mime, data, status, code in cases:
        got_status, body, _ = await upload(http, svc, tok, name, mime, data)
        assert (got_status, body["error"]) == (status, code), (name, body)
    # Another account's token does not upload here.
    other_ws, other = await open_visitor(http, base(svc), account="shop")
    assert (await upload(http, svc, other["token"], "a.pdf", "application/pdf", PDF))[0] == 401
    # The per-visitor rate (refused uploads count: each was read): a burst of 5, then "come back in N seconds".
    fresh_ws, fresh = await open_visitor(http, base(svc))
    for _ in range(5):
        assert (await upload(http, svc, fresh["token"], "ok.pdf", "application/pdf", PDF))[0] == 200
    status, body, headers = await upload(http, svc, fresh["token"], "ok.pdf", "application/pdf", PDF)
    assert (status, body["error"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1
    # A file id the visitor never uploaded (another visitor's, a guess): refused, not published.
    await ws.send_json({"type": "message", "id": "m-guess", "text": "", "files": ["AAAAAAAAAAAAAAAAAAAAAAAA"]})
    err = await recv(ws)
    assert (err["type"], err["code"], err["id"]) == ("error", "bad_file", "m-guess")
    assert await inbound(nc.jetstream(), f"webchat:demo:{welcome['visitor']}:m-guess") == []
    # Only the five accepted uploads were stored.
    stored = await (await nc.jetstream().object_store(subjects.OBJ_WEBCHAT_FILES)).list()
    assert sorted(o.name.rsplit("/", 1)[0] for o in stored) == [f"demo/{fresh['visitor']}"] * 5
    # The browser's preflight for the cross-site upload.
    async with http.options(f"{base(svc)}/files/demo", headers={"Origin": "https://shop.example.com"}) as pre:
        assert pre.status == 204 and "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    await ws.close()
    await other_ws.close()
    await fresh_ws.close()
