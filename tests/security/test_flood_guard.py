"""A Telegram or VK chat flooding a line: every webhook is answered as the platform expects and every
message is stored, but beyond the limit the operator is no longer notified of each one; the chat is
flagged for a supervisor (an event and a transcript line).

The Telegram and VK gateways, the router and the desk run for real over real sockets; the local
Telegram and VK peers deliver the webhooks.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from peers.telegram_api import FakeTelegram, message_update
from support import EXAMPLE_LINES, apply_lines, events, history, line_block, running_router, session_of
from support.desk import http_session, running_desk, sign_in
from support.telegram import SUPPORT, fake_telegram
from support.telegram import running_gateway as telegram_gateway
from support.timing import scaled, wait_for
from support.vk import ACCOUNT as VK_ACCOUNT
from support.vk import fake_vk, sender
from support.vk import running_gateway as vk_gateway

from openlines.envelopes import HistoryEntry
from openlines.state import Session

LIMIT = 5
# A window far longer than the test: the count never resets while it runs.
ROUTER = {"flood_limit": LIMIT, "flood_window": 3600.0}
FLOOD = 3 * LIMIT
# Where session_of finds a Telegram and a VK client: both channels feed line "social".
TG = {"channel": "telegram", "account": SUPPORT["account"], "line": "social"}
VK = {"channel": "vk", "account": VK_ACCOUNT, "line": "social"}


def lines() -> str:
    """The example operators (anna signs in with "demo") and a line fed by a Telegram bot and a VK community."""
    example = EXAMPLE_LINES.read_text()
    operators = example[: example.index("[[lines]]")]
    channels = f'[{{ channel = "telegram", account = "{SUPPORT["account"]}" }}, {{ channel = "vk", account = "{VK_ACCOUNT}" }}]'
    return operators + line_block("social", name="Social", channels=channels, operators='"anna"')


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with fake_telegram() as peer:
        yield peer


async def transcript_with(nc: Any, session_id: str, n_in: int) -> list[HistoryEntry] | None:
    entries = await history(nc, session_id)
    return entries if sum(e.direction == "in" for e in entries) >= n_in else None


def check_flagged(entries: list[HistoryEntry], texts: list[str], session: Session) -> None:
    """Every message stored in order; those beyond the limit held; one flood line before the first held one."""
    inbound = [e for e in entries if e.direction == "in"]
    assert [e.text for e in inbound] == texts
    assert [e.held for e in inbound] == [False] * LIMIT + [True] * (len(texts) - LIMIT)
    notes = [e for e in entries if e.direction == "system" and e.text.startswith("Flood:")]
    assert len(notes) == 1, notes
    assert notes[0].text.startswith(f"Flood: more than {LIMIT} messages in ")
    assert "held for a supervisor" in notes[0].text
    order = [e.id for e in entries]
    assert order.index(notes[0].id) < order.index(inbound[LIMIT].id)  # the reason comes before what it holds
    # The operator's unread count counts only what was let through; the chat is marked for a supervisor.
    assert session.messages_in == LIMIT and session.flagged == "flood" and session.flood_count == len(texts)


async def test_a_telegram_flood_is_stored_answered_200_and_held_for_a_supervisor(
    nats_server: Any, nc: Any, telegram: Any
) -> None:
    await apply_lines(nc, lines())
    texts = [f"flood {i}" for i in range(FLOOD)]
    async with running_router(nats_server.url, **ROUTER), telegram_gateway(nats_server.url, telegram):
        for i, text in enumerate(texts):
            status, body = await telegram.deliver(SUPPORT["token"], message_update(900_000 + i, 4242, text, message_id=i + 1))
            assert status == 200, body  # answered as Telegram expects: it never retries, nothing is lost
        session = await wait_for(lambda: session_of(nc, "4242", **TG), what="the session")
        entries = await wait_for(lambda: transcript_with(nc, session.id, FLOOD), timeout=30, what="every message stored")
        session = await session_of(nc, "4242", **TG)
        assert session is not None
        check_flagged(entries, texts, session)
        flagged = [e for e in await events(nc, "session_flagged") if e.session_id == session.id]
        assert len(flagged) == 1 and flagged[0].reason.startswith(f"Flood: more than {LIMIT} messages")
        assert (flagged[0].channel, flagged[0].chat_id) == ("telegram", "4242")
        # Another chat of the same bot is not affected.
        assert (await telegram.deliver(SUPPORT["token"], message_update(990_000, 5151, "calm question")))[0] == 200
        calm = await wait_for(lambda: session_of(nc, "5151", **TG), what="the calm chat")
        assert not calm.flagged and calm.messages_in == 1


async def test_a_vk_flood_is_stored_answered_ok_and_held_for_a_supervisor(nats_server: Any, nc: Any) -> None:
    await apply_lines(nc, lines())
    vk = fake_vk(users={2002: ("Olga", "Flood")})
    await vk.start()
    texts = [f"vk flood {i}" for i in range(FLOOD)]
    try:
        async with (
            aiohttp.ClientSession() as http,
            running_router(nats_server.url, **ROUTER),
            vk_gateway(nats_server.url, vk.url) as gw,
        ):
            cb = sender(http, gw)
            for i, text in enumerate(texts):
                assert await cb.post(cb.message_new(text, from_id=2002, event_id=f"ev-flood-{i}")) == (200, "ok")
            session = await wait_for(lambda: session_of(nc, "2002", **VK), what="the session")
            entries = await wait_for(lambda: transcript_with(nc, session.id, FLOOD), timeout=30, what="every message stored")
            session = await session_of(nc, "2002", **VK)
            assert session is not None
            check_flagged(entries, texts, session)
            assert len([e for e in await events(nc, "session_flagged") if e.session_id == session.id]) == 1
    finally:
        await vk.stop()


async def test_the_operator_is_not_pushed_the_held_messages_and_the_supervisor_sees_the_flag(
    nats_server: Any, nc: Any, telegram: Any
) -> None:
    await apply_lines(nc, lines())
    async with (
        running_router(nats_server.url, **ROUTER),
        telegram_gateway(nats_server.url, telegram),
        running_desk(nats_server.url) as desk,
        http_session(desk) as http,
    ):
        h = await sign_in(http, "anna")
        async with http.ws_connect("/ws") as ws:
            assert (await ws.receive_json(timeout=scaled(10)))["type"] == "snapshot"
            assert (await http.post("/api/status", json={"status": "online"}, headers=h)).status == 200
            pushed: list[dict[str, Any]] = []

            async def deliver(i: int, text: str) -> None:
                assert (await telegram.deliver(SUPPORT["token"], message_update(800_000 + i, 7777, text, message_id=i + 1)))[
                    0
                ] == 200

            await deliver(0, "first")
            while True:  # the chat is offered to anna
                frame = await ws.receive_json(timeout=scaled(10))
                if frame["type"] == "chat":
                    break
            for i in range(1, FLOOD):
                await deliver(i, f"m{i}")
            await deliver(FLOOD, "marker")  # held too: it must not arrive either
            session = await wait_for(lambda: session_of(nc, "7777", **TG), what="the session")
            await wait_for(lambda: transcript_with(nc, session.id, FLOOD + 1), timeout=30, what="every message stored")
            # The operator answers; that reply is pushed after everything the desk had to push before it.
            assert (await http.post(f"/api/sessions/{session.id}/accept", headers=h)).status == 200
            reply = {"text": "Please slow down", "client_msg_id": "r-flood"}
            assert (await http.post(f"/api/sessions/{session.id}/reply", json=reply, headers=h)).status == 200
            while True:
                frame = await ws.receive_json(timeout=scaled(10))
                if frame["type"] == "message" and frame.get("direction") == "in":
                    pushed.append(frame)
                if frame["type"] == "message" and frame.get("text") == reply["text"]:
                    break
            # Only the messages within the limit were pushed ("first" came with the offer, and may be pushed
            # too when the desk looked the session up after the offer).
            assert [f["text"] for f in pushed if f["text"] != "first"] == [f"m{i}" for i in range(1, LIMIT)]
            # The whole transcript is there when the operator (or a supervisor) opens the chat.
            got = await (await http.get(f"/api/sessions/{session.id}/history")).json()
            inbound = [e["text"] for e in got["entries"] if e["direction"] == "in"]
            assert inbound == ["first", *[f"m{i}" for i in range(1, FLOOD)], "marker"]
        overview = await (await http.get("/api/supervisor")).json()
        flagged = [s for line in overview["lines"] for s in line["sessions"] if s["id"] == session.id]
        assert flagged and flagged[0]["flagged"] == "flood", overview
        async with aiohttp.ClientSession() as ops:  # /metrics is on the desk's internal port
            metrics = await (await ops.get(f"http://127.0.0.1:{desk.metrics_port}/metrics")).text()
        held = re.search(r"^openlines_desk_held_messages_total (\S+)$", metrics, re.MULTILINE)
        assert held and float(held.group(1)) >= FLOOD + 1 - LIMIT
