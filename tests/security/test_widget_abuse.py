"""Abuse at the widget, replayed against the real gateway process: each attack is refused, says why, stores nothing.

Attacks from the review: one socket storing thousands of messages into one
operator's chat; dozens of new visitors a second from one address; sockets on a
widget account no line uses; visitor tokens that never expire and travel in
the URL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.timing import scaled, wait_for
from support.webchat import (
    SECRET,
    WIDGET_LINES,
    bind_widget_accounts,
    connect,
    hello_frame,
    metric,
    open_visitor,
    recv,
    webchat_process,
)

from gateway_webchat.token import VisitorToken, sign
from openlines import bus, subjects

TTL = 3600
GRACE = 7200


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def stored(nc: Any, account: str = "demo") -> int:
    """Visitor messages of ``account`` in OL_IN."""
    rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_IN, subjects.inbound_account("webchat", account))
    return len(rows)


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    msg = await ws.receive(timeout=scaled(10))
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
    return ws.close_code, str(msg.extra or "")


async def say(ws: aiohttp.ClientWebSocketResponse, msg_id: str, text: str = "hi") -> dict[str, Any]:
    await ws.send_json({"type": "message", "id": msg_id, "text": text})
    return await recv(ws)


# -- 1. widget accounts no line uses -------------------------------------------------


async def test_a_socket_on_a_widget_account_no_line_uses_is_refused_and_stores_nothing(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    async with webchat_process(nats_server.url, tmp_path) as base:
        ws, err = await connect(http, base, account="nobody")
        assert err == {"type": "error", "code": "bad_account", "detail": "no line uses this widget account"}
        assert await closed_with(ws) == (4404, "bad_account: no line uses this widget account")
        # Nothing was issued, nothing can be sent.
        assert await stored(nc, "nobody") == 0
        # A bound account is served by the same process.
        ok, welcome = await open_visitor(http, base, account="shop")
        assert welcome["new"] is True
        await ok.close()


async def test_unbinding_an_account_refuses_its_open_sockets_next_message(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    async with webchat_process(nats_server.url, tmp_path) as base:
        ws, _ = await open_visitor(http, base, account="shop")
        assert (await say(ws, "m1"))["type"] == "ack"
        # The line now feeds only "demo": "shop" is no longer anybody's.
        await bind_widget_accounts(nc, WIDGET_LINES.replace(', { channel = "webchat", account = "shop" }', ""))

        acked = 1
        refusal: dict[str, Any] = {}

        async def refused() -> bool:
            nonlocal acked, refusal
            frame = await say(ws, f"m{acked + 1}")
            if frame["type"] == "ack":
                acked += 1  # the gateway has not seen the change yet
                return False
            refusal = frame
            return True

        await wait_for(refused, what="the unbound account refused")
        assert (refusal["code"], refusal["detail"]) == ("bad_account", "no line uses this widget account any more")
        assert (await closed_with(ws))[0] == 4404
        assert await stored(nc, "shop") == acked  # the refused message was not stored
        ws2, err2 = await connect(http, base, account="shop")
        assert err2["code"] == "bad_account"
        assert (await closed_with(ws2))[0] == 4404


# -- 2. message floods and visitor floods -----------------------------------------------


async def test_a_flooding_socket_gets_rate_limited_frames_and_only_acked_messages_are_stored(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    # 3 at once, then one every 100 minutes: nothing refills while this test runs.
    env = {"OPENLINES_VISITOR_MESSAGES_PER_MINUTE": "0.01", "OPENLINES_VISITOR_MESSAGE_BURST": "3"}
    async with webchat_process(nats_server.url, tmp_path, **env) as base:
        ws, welcome = await open_visitor(http, base)
        frames = [await say(ws, f"flood-{i}", f"spam {i}") for i in range(200)]
        acked = [f for f in frames if f["type"] == "ack"]
        refused = [f for f in frames if f["type"] == "error"]
        assert [f["id"] for f in acked] == ["flood-0", "flood-1", "flood-2"]
        assert len(refused) == 197
        for f in refused:
            assert f["code"] == "rate_limited" and f["retry_after"] >= 1 and f["detail"], f
            assert f["id"].startswith("flood-")
        assert await stored(nc) == 3  # a refused message is not stored
        assert await metric(base, "openlines_webchat_rate_limited_total", limit="messages") == 197
        assert not ws.closed  # refused, not disconnected: the widget resends later
        # A reconnect does not reset the visitor's budget; another visitor has its own.
        await ws.close()
        again, back = await open_visitor(http, base, token=welcome["token"])
        assert back["visitor"] == welcome["visitor"]
        assert (await say(again, "after-reconnect"))["code"] == "rate_limited"
        other, _ = await open_visitor(http, base)
        assert (await say(other, "someone-else"))["type"] == "ack"
        assert await stored(nc) == 4
        await again.close()
        await other.close()


async def test_new_visitors_from_one_address_are_limited_and_refused_ones_get_no_token(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    env = {"OPENLINES_NEW_VISITORS_PER_MINUTE": "0.01", "OPENLINES_NEW_VISITOR_BURST": "10"}
    async with webchat_process(nats_server.url, tmp_path, **env) as base:
        welcomed, refused = [], []
        for _ in range(40):
            ws, first = await connect(http, base)
            if first["type"] == "welcome":
                welcomed.append((ws, first))
            else:
                assert first["code"] == "rate_limited" and first["retry_after"] >= 1, first
                assert "token" not in first
                code, reason = await closed_with(ws)
                assert (code, reason) == (4429, "rate_limited: too many new chats from your address")
                refused.append(first)
        assert (len(welcomed), len(refused)) == (10, 30)
        # A known visitor (a token) is not a new visit: still served from the same address.
        ws, back = await open_visitor(http, base, token=welcomed[0][1]["token"])
        assert back["visitor"] == welcomed[0][1]["visitor"]
        assert (await say(ws, "known-1"))["type"] == "ack"
        for w, _ in welcomed:
            await w.close()
        await ws.close()
        assert await metric(base, "openlines_webchat_rate_limited_total", limit="new_visitor") == 30


async def test_behind_a_trusted_proxy_each_client_address_has_its_own_budget_and_the_header_cannot_be_forged(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    env = {"OPENLINES_NEW_VISITORS_PER_MINUTE": "0.01", "OPENLINES_NEW_VISITOR_BURST": "2"}
    # Not trusted: the header a client sends itself changes nothing.
    async with webchat_process(nats_server.url, tmp_path, **env) as base:
        firsts = [(await connect(http, base, headers={"X-Forwarded-For": f"198.51.100.{i}"}))[1] for i in range(3)]
        assert [f["type"] for f in firsts] == ["welcome", "welcome", "error"]
    # Our proxy on 127.0.0.1: the address it appends is the client's.
    async with webchat_process(nats_server.url, tmp_path, OPENLINES_TRUSTED_PROXIES="127.0.0.1", **env) as base:
        one = [(await connect(http, base, headers={"X-Forwarded-For": "198.51.100.7"}))[1] for _ in range(3)]
        assert [f["type"] for f in one] == ["welcome", "welcome", "error"]
        other = (await connect(http, base, headers={"X-Forwarded-For": "198.51.100.8"}))[1]
        assert other["type"] == "welcome"
        # A client prepending addresses of its own choosing still counts as what our proxy saw.
        forged = (await connect(http, base, headers={"X-Forwarded-For": "203.0.113.99, 198.51.100.7"}))[1]
        assert forged["code"] == "rate_limited"


# -- 5. tokens: never in the URL, expiring, renewable only by their holder ----------------


async def test_a_token_in_the_url_is_refused_with_a_clear_reason(nc: Any, nats_server: Any, tmp_path: Path, http: Any) -> None:
    await bind_widget_accounts(nc)
    async with webchat_process(nats_server.url, tmp_path) as base:
        _, welcome = await open_visitor(http, base)
        ws = await http.ws_connect(f"{base}/ws/demo", params={"token": welcome["token"], "since": "0"})
        err = await recv(ws)
        assert err["code"] == "token_in_url" and "first frame" in err["detail"]
        assert (await closed_with(ws))[0] == 4400
        assert await stored(nc) == 0


async def test_a_socket_must_say_hello_first_and_in_time(nc: Any, nats_server: Any, tmp_path: Path, http: Any) -> None:
    await bind_widget_accounts(nc)
    async with webchat_process(nats_server.url, tmp_path, OPENLINES_HELLO_TIMEOUT="1") as base:
        ws = await http.ws_connect(f"{base}/ws/demo")
        await ws.send_json({"type": "message", "id": "sneak", "text": "no hello"})
        err = await recv(ws)
        assert err["code"] == "auth_required"
        assert (await closed_with(ws))[0] == 4400
        silent = await http.ws_connect(f"{base}/ws/demo")
        err = await recv(silent)
        assert err == {"type": "error", "code": "auth_timeout", "detail": "no hello frame in time"}
        assert (await closed_with(silent))[0] == 4408
        assert await stored(nc) == 0


def aged_token(visitor: str, age: int) -> str:
    return sign(SECRET, VisitorToken("demo", visitor, int(time.time()) - age))


async def test_an_expired_token_cannot_chat_but_its_holder_can_renew_it_within_the_grace(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    env = {"OPENLINES_VISITOR_TTL": str(TTL), "OPENLINES_VISITOR_GRACE": str(GRACE)}
    async with webchat_process(nats_server.url, tmp_path, **env) as base:
        visitor = "V" * 22
        # A valid token is renewed on every connection: a fresh one, the same visitor.
        ws, fresh = await open_visitor(http, base, token=aged_token(visitor, TTL - 60))
        assert fresh["visitor"] == visitor and fresh["new"] is False
        assert fresh["expires_at"] >= int(time.time()) + TTL - 5
        await ws.close()

        expired = aged_token(visitor, TTL + 60)
        ws, err = await connect(http, base, token=expired)
        assert err == {"type": "error", "code": "token_expired", "detail": "visitor token expired; renew it", "renewable": True}
        # Not authenticated: a message now is refused and closes the socket.
        await ws.send_json({"type": "message", "id": "x1", "text": "let me in"})
        assert (await recv(ws))["code"] == "auth_required"
        assert (await closed_with(ws))[0] == 4400
        # The holder renews it.
        ws, err = await connect(http, base, token=expired)
        assert err["code"] == "token_expired"
        await ws.send_json({"type": "renew", "token": expired})
        renewed = await recv(ws)
        assert renewed["type"] == "welcome" and renewed["visitor"] == visitor and renewed["token"] != expired
        assert (await say(ws, "after-renew"))["type"] == "ack"
        await ws.close()

        # Past the grace: refused for good, the widget starts a new visit.
        ws, err = await connect(http, base, token=aged_token(visitor, TTL + GRACE + 60))
        assert err["code"] == "bad_token" and "too long ago" in err["detail"]
        assert (await closed_with(ws))[0] == 4401
        ws = await http.ws_connect(f"{base}/ws/demo")
        await ws.send_json({"type": "renew", "token": aged_token(visitor, TTL + GRACE + 60)})
        assert (await recv(ws))["code"] == "bad_token"
        assert (await closed_with(ws))[0] == 4401
        assert await stored(nc) == 1  # only "after-renew"


async def test_a_second_hello_with_an_expired_token_instead_of_a_renew_is_refused(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    env = {"OPENLINES_VISITOR_TTL": str(TTL), "OPENLINES_VISITOR_GRACE": str(GRACE)}
    async with webchat_process(nats_server.url, tmp_path, **env) as base:
        expired = aged_token("W" * 22, TTL + 60)
        ws, err = await connect(http, base, token=expired)
        assert err["code"] == "token_expired"
        await ws.send_json(hello_frame(expired))
        assert (await recv(ws))["code"] == "bad_token"
        assert (await closed_with(ws))[0] == 4401


async def test_a_socket_waiting_for_its_hello_is_closed_at_once_when_the_gateway_stops(
    nc: Any, nats_server: Any, tmp_path: Path, http: Any
) -> None:
    await bind_widget_accounts(nc)
    async with webchat_process(nats_server.url, tmp_path, OPENLINES_HELLO_TIMEOUT="600") as base:
        ws = await http.ws_connect(f"{base}/ws/demo")
    # The process has stopped (the block waited for it): the socket was told to go elsewhere, not left hanging.
    msg = await ws.receive(timeout=scaled(10))
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
