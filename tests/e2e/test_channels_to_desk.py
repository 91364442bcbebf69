"""Telegram and VK clients write; an operator answers them in the desk.

The real router, desk, Telegram gateway and VK gateway run over a real
nats-server; the messengers are the local protocol peers. Each reply must
reach its messenger exactly once.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import aiohttp
import pytest
from peers.telegram_api import message_update
from support import apply_lines, running_router
from support.servers import creds
from support.telegram import SUPPORT, fake_telegram
from support.telegram import running_gateway as running_telegram
from support.timing import wait_for
from support.vk import ACCOUNT as VK_ACCOUNT
from support.vk import fake_vk, sender
from support.vk import running_gateway as running_vk

from openlines import subjects
from openlines.runner import launch

pytestmark = pytest.mark.e2e

LINES = f"""
[operators.anna]
name = "Anna Petrova"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$lnVxAV5jr5Rkxs+g7cYYUA$RpI/HRgy0qV+aC6PirWrn3wZwtzmyU/zjbOpAstaqWg"

[[lines]]
id = "messengers"
name = "Messengers"
channels = [{{ channel = "telegram", account = "support_bot" }}, {{ channel = "vk", account = "{VK_ACCOUNT}" }}]
[lines.queue]
operators = ["anna"]
"""  # anna's password is "demo", as in deploy/lines.example.toml


async def test_telegram_and_vk_clients_are_answered_from_the_desk_exactly_once(nc: Any, nats_server: Any) -> None:
    from desk.app import setup as desk_setup
    from desk.settings import Settings as DeskSettings

    await apply_lines(nc, LINES)
    vk = fake_vk(users={2002: ("Olga", "Smirnova")})
    await vk.start()
    try:
        async with (
            running_router(nats_server.url),
            fake_telegram() as tg,
            running_telegram(nats_server.url, tg) as _tg_gateway,
            running_vk(nats_server.url, vk.url) as vk_gateway,
            aiohttp.ClientSession() as callbacks,
        ):
            desk = await launch(
                "desk",
                DeskSettings(
                    nats_url=nats_server.url,
                    http_port=0,
                    cookie_secret="e2e-desk-cookie-0123-Kq7Zt9Wm3xRv",
                    **creds("desk"),
                ),
                desk_setup,
            )
            try:
                async with aiohttp.ClientSession(
                    base_url=f"http://127.0.0.1:{desk.port}", cookie_jar=aiohttp.CookieJar(unsafe=True)
                ) as http:
                    form = await (await http.get("/login")).text()
                    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
                    assert token
                    await http.post("/login", data={"login": "anna", "password": "demo", "csrf_token": token.group(1)})
                    page = await (await http.get("/")).text()
                    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
                    assert csrf
                    h = {"X-CSRF-Token": csrf.group(1)}
                    assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200

                    # A Telegram user and a VK user write (the messengers resend once, as they do).
                    update = message_update(5001, 777, "Where is my parcel?")
                    assert (await tg.deliver(SUPPORT["token"], update))[0] == 200
                    assert (await tg.deliver(SUPPORT["token"], update))[0] == 200
                    cb = sender(callbacks, vk_gateway)
                    event = cb.message_new("Is the shop open on Sunday?", from_id=2002, event_id="ev-vk-1")
                    assert await cb.post(event) == (200, "ok")
                    assert await cb.post(event) == (200, "ok")

                    async def both_chats() -> list[dict[str, Any]] | None:
                        chats = (await (await http.get("/api/chats")).json())["chats"]
                        return chats if len(chats) == 2 else None

                    chats = {c["channel"]: c for c in await wait_for(both_chats, what="both chats in the desk")}
                    for channel, text in (("telegram", "It left the warehouse today."), ("vk", "Yes, 10 to 16.")):
                        body = {"text": text, "client_msg_id": uuid.uuid4().hex}
                        r = await http.post(f"/api/sessions/{chats[channel]['id']}/reply", json=body, headers=h)
                        assert r.status == 200, await r.text()

                    await wait_for(lambda: tg.sent(777, "sendMessage"), what="the Telegram reply")
                    await wait_for(lambda: vk.sent_to(2002), what="the VK reply")

                    async def delivered_all() -> bool:  # nothing left that could still arrive twice
                        for consumer in ("gateway-telegram", "gateway-vk"):
                            info = await nc.jetstream().consumer_info(subjects.STREAM_OUT, consumer)
                            if info.num_pending or info.num_ack_pending:
                                return False
                        return True

                    await wait_for(delivered_all, what="both gateways done delivering")
                    tg_texts = [c.params["text"] for c in tg.sent(777, "sendMessage")]
                    vk_texts = [s.message for s in vk.sent_to(2002)]
                    history = (await (await http.get(f"/api/sessions/{chats['telegram']['id']}/history")).json())["entries"]
                    assert [e["text"] for e in history if e["direction"] == "in"] == ["Where is my parcel?"]
            finally:
                await desk.stop()
    finally:
        await vk.stop()
    assert tg_texts == ["It left the warehouse today."]
    assert vk_texts == ["Yes, 10 to 16."]
