"""No server-side fetch of a URL built from request data, and a desk that answers only its own host names.

The attack this reproduces: with no public URL set, the desk built the links of
operators' files from the request's ``Host`` header, and the Telegram gateway
downloaded whatever URL an attachment named and uploaded it into the client's
chat. An operator sending a file with ``Host: 127.0.0.1:<crm-sync port>/crm/leads#``
delivered crm-sync's lead list to a Telegram chat (the Telegram side - links are
never fetched - is in tests/integration/telegram/test_telegram_delivery.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import apply_lines, client_writes, outbound_for, running_router
from support.desk import desk_url, http_session, running_desk, sign_in
from support.timing import wait_for

from desk.settings import Settings
from openlines.settings import SettingsError, load_settings


@pytest.fixture
async def router(nc: Any, nats_server: Any) -> AsyncIterator[None]:
    await apply_lines(nc, None)
    async with running_router(nats_server.url):
        yield


async def a_file_ready_to_send(http: aiohttp.ClientSession, h: dict[str, str], nc: Any, visitor: str) -> tuple[str, str]:
    """Anna online, a client writes, Anna accepts and uploads a PDF: (session id, file id)."""
    assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
    await client_writes(nc, visitor, f"in-{visitor}", "Hello")

    async def offered() -> str | None:
        chats = (await (await http.get("/api/chats")).json())["chats"]
        return next((c["id"] for c in chats if c["status"] == "assigned"), None)

    sid = await wait_for(offered, what="the chat offered to anna")
    assert (await http.post(f"/api/sessions/{sid}/accept", headers=h)).status == 200
    form = aiohttp.FormData()
    form.add_field("file", b"%PDF-1.4 price list", filename="prices.pdf", content_type="application/pdf")
    up = await http.post(f"/api/sessions/{sid}/files", data=form, headers=h)
    assert up.status == 200, await up.text()
    return sid, (await up.json())["file"]["id"]


async def links_sent(nc: Any, visitor: str) -> list[str]:
    return [a.url for o in await outbound_for(nc, visitor) for a in o.attachments]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8087/crm/leads#",  # a path smuggled into Host: the link would have pointed at crm-sync
        "evil.example",  # DNS rebinding: a name the attacker controls, resolving to the desk
        "evil.example:8080",
        "127.0.0.1@evil.example",
    ],
)
async def test_a_reply_under_a_forged_host_is_refused_and_sends_nothing(
    nc: Any, nats_server: Any, router: None, host: str
) -> None:
    async with running_desk(nats_server.url) as desk, http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid, file_id = await a_file_ready_to_send(http, h, nc, "v-forged")
        body = {"text": "the list", "client_msg_id": "forged-1", "files": [file_id]}
        r = await http.post(f"/api/sessions/{sid}/reply", json=body, headers={**h, "Host": host})
        assert r.status == 400, await r.text()
        assert (await r.json())["error"] == "unknown_host"
        # Pages too: nothing is answered under a name the desk is not served as.
        page = await http.get("/login", headers={"Host": host})
        assert page.status == 400
        # Probes call by address: health answers any host.
        assert (await http.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status == 200
        # Sent under the right host, the link is the loopback address the request came to.
        ok = await http.post(f"/api/sessions/{sid}/reply", json={**body, "client_msg_id": "right-1"}, headers=h)
        assert ok.status == 200, await ok.text()
        urls = await wait_for(lambda: links_sent(nc, "v-forged"), what="the reply")
        assert urls == [f"{desk_url(desk)}/files/{sid}/{file_id}/prices.pdf"]


async def test_links_come_from_the_public_url_whatever_host_the_request_names(nc: Any, nats_server: Any, router: None) -> None:
    # cookie_secure=False: the test talks plain http to 127.0.0.1, and with an https public URL cookies are Secure.
    overrides = {"desk_public_url": "https://desk.example.com", "desk_allowed_hosts": "desk.internal", "cookie_secure": False}
    async with running_desk(nats_server.url, **overrides) as desk, http_session(desk) as http:
        h = await sign_in(http, "anna")
        sid, file_id = await a_file_ready_to_send(http, h, nc, "v-public")
        body = {"text": "the list", "client_msg_id": "pub-1", "files": [file_id]}
        r = await http.post(f"/api/sessions/{sid}/reply", json=body, headers={**h, "Host": "desk.internal:8080"})
        assert r.status == 200, await r.text()
        urls = await wait_for(lambda: links_sent(nc, "v-public"), what="the reply")
        assert urls == [f"https://desk.example.com/files/{sid}/{file_id}/prices.pdf"]
        assert (await http.get("/login", headers={"Host": "desk.example.com"})).status == 200
        assert (await http.get("/login", headers={"Host": "other.example.com"})).status == 400


def test_a_desk_listening_beyond_loopback_needs_its_public_url() -> None:
    env = {"OPENLINES_COOKIE_SECRET": "9c1f7e2a4b6d8f0e3a5c7b9d1f2e4a6c", "OPENLINES_HTTP_HOST": "0.0.0.0"}
    with pytest.raises(SettingsError, match="OPENLINES_DESK_PUBLIC_URL must be set"):
        load_settings(Settings, env)
    for bad in ("desk.example.com", "https://desk.example.com/files/", "https://u:p@desk.example.com", "ftp://x"):
        with pytest.raises(SettingsError, match="OPENLINES_DESK_PUBLIC_URL"):
            load_settings(Settings, {**env, "OPENLINES_DESK_PUBLIC_URL": bad})
    assert load_settings(Settings, {**env, "OPENLINES_DESK_PUBLIC_URL": "https://desk.example.com/"}).desk_public_url


def test_the_old_ambiguous_public_url_variable_is_refused_with_what_replaces_it() -> None:
    env = {"OPENLINES_COOKIE_SECRET": "9c1f7e2a4b6d8f0e3a5c7b9d1f2e4a6c", "OPENLINES_PUBLIC_URL": "https://chat.example.com"}
    with pytest.raises(SettingsError, match=r"OPENLINES_DESK_PUBLIC_URL.*OPENLINES_WIDGET_PUBLIC_URL"):
        load_settings(Settings, env)
