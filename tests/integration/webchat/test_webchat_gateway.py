"""The webchat gateway over real sockets: a real nats-server, the service in-process, aiohttp WebSocket clients."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from nats.js import JetStreamContext
from support.servers import creds
from support.timing import scaled, wait_for
from support.webchat import bind_widget_accounts, hello_frame, open_visitor, recv

from gateway_webchat import Settings, setup
from gateway_webchat.service import WEBCHAT
from gateway_webchat.token import VisitorToken, sign
from openlines import bus, runner, subjects
from openlines.envelopes import MSG_ID_HEADER, Inbound, Outbound, decoder, encode

SECRET = "test-secret-0123456789abcdef-Kq7Zt9Wm3xRv"
MAX_TEXT = 100
MAX_FRAME = 2048

Frame = dict[str, Any]
WS = aiohttp.ClientWebSocketResponse


async def start(url: str, **overrides: Any) -> runner.Service[Settings]:
    settings = Settings(
        nats_url=url,
        http_port=0,
        webchat_secret=SECRET,
        max_text=MAX_TEXT,
        max_frame=MAX_FRAME,
        shutdown_timeout=3.0,
        **{**creds("gateway-webchat"), **overrides},
    )
    return await runner.launch("gateway-webchat", settings, setup, first_attempts=5)


@pytest.fixture
async def svc(nats_server: Any, nc: Any) -> AsyncIterator[runner.Service[Settings]]:
    await bind_widget_accounts(nc)
    service = await start(nats_server.url)
    yield service
    await service.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def base(svc: runner.Service[Settings]) -> str:
    return f"http://127.0.0.1:{svc.port}"


def consumer_ready(svc: runner.Service[Settings]) -> bool:
    return svc.app[WEBCHAT].consumer.ready() is None


async def open_ws(
    http: aiohttp.ClientSession,
    svc: runner.Service[Settings],
    *,
    token: str = "",
    since: int | None = None,
    account: str = "demo",
) -> tuple[WS, Frame]:
    return await open_visitor(http, base(svc), token=token, since=since, account=account)


async def say(ws: WS, msg_id: str, text: str = "hello", **extra: Any) -> Frame:
    await ws.send_json({"type": "message", "id": msg_id, "text": text, **extra})
    return await recv(ws)


async def inbound_with_id(js: JetStreamContext, envelope_id: str, account: str = "demo") -> list[Inbound]:
    dec = decoder(Inbound)
    msgs = await bus.read_subject(js, subjects.STREAM_IN, subjects.inbound_account("webchat", account))
    return [env for env in (dec.decode(data) for _, data in msgs) if env.id == envelope_id]


async def publish_reply(js: JetStreamContext, visitor: str, text: str, *, account: str = "demo", n: int = 0) -> int:
    chat = subjects.chat_key("webchat", account, visitor)
    out = Outbound(
        id=f"out-{visitor}-{n}-{text}",
        session_id="s1",
        channel="webchat",
        account=account,
        chat_id=visitor,
        text=text,
        operator_id="op1",
        operator_name="Olga",
        created_at=datetime.now(UTC),
    )
    ack = await js.publish(subjects.outbound("webchat", account, chat), encode(out), headers={MSG_ID_HEADER: out.id})
    return int(ack.seq)


# -- visitor identity -----------------------------------------------------------


async def test_new_visitor_gets_a_token_and_reconnecting_with_it_keeps_the_visitor(svc: Any, http: Any) -> None:
    ws, welcome = await open_ws(http, svc)
    assert welcome["new"] is True and welcome["token"] and welcome["visitor"]
    assert welcome["max_text"] == MAX_TEXT
    await ws.close()
    ws2, again = await open_ws(http, svc, token=welcome["token"])
    assert again["visitor"] == welcome["visitor"] and again["new"] is False and again["token"]
    await ws2.close()
    ws3, other = await open_ws(http, svc)
    assert other["visitor"] != welcome["visitor"]
    await ws3.close()


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda visitor: sign(SECRET, VisitorToken("other", visitor, 1)), id="other-account"),
        pytest.param(lambda visitor: sign("another-secret-0123456789", VisitorToken("demo", visitor, 1)), id="bad-signature"),
        pytest.param(lambda visitor: "garbage", id="garbage"),
    ],
)
async def test_bad_token_gets_an_error_frame_and_close_4401(svc: Any, http: Any, make_token: Any) -> None:
    ws = await http.ws_connect(f"{base(svc)}/ws/demo")
    await ws.send_json(hello_frame(make_token("A" * 22)))
    err = await recv(ws)
    assert err["type"] == "error" and err["code"] == "bad_token" and err["detail"]
    closing = await ws.receive(timeout=scaled(10))
    assert closing.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4401
    assert "bad_token" in closing.extra


async def test_unknown_account_is_refused_with_4404(nats_server: Any, nc: Any, http: Any) -> None:
    await bind_widget_accounts(nc)
    service = await start(nats_server.url, accounts="demo,shop")
    try:
        ws = await http.ws_connect(f"{base(service)}/ws/nope")
        err = await recv(ws)
        assert err["code"] == "bad_account"
        await ws.receive(timeout=scaled(10))
        assert ws.close_code == 4404
        ok, welcome = await open_ws(http, service, account="shop")
        assert welcome["visitor"]
        await ok.close()
    finally:
        await service.stop()


# -- visitor messages -----------------------------------------------------------


async def test_message_is_acked_sent_only_once_it_is_in_ol_in(svc: Any, http: Any, nc: Any) -> None:
    ws, welcome = await open_ws(http, svc)
    visitor = welcome["visitor"]
    ack = await say(ws, "c-1", "Where is my order?", name="  Ann   Lee ")
    assert ack == {"type": "ack", "id": "c-1", "status": "sent", "duplicate": False}
    js = nc.jetstream()
    last = await js.get_last_msg(subjects.STREAM_IN, subjects.inbound_account("webchat", "demo"))
    assert last.headers is not None and last.headers[MSG_ID_HEADER] == f"webchat:demo:{visitor}:c-1"
    env = decoder(Inbound).decode(last.data)
    assert (env.channel, env.account, env.chat_id, env.user_id) == ("webchat", "demo", visitor, visitor)
    assert (env.text, env.channel_msg_id, env.profile.name) == ("Where is my order?", "c-1", "Ann Lee")
    assert env.id == f"webchat:demo:{visitor}:c-1"
    await ws.close()


async def test_resending_the_same_client_id_after_reconnect_is_a_duplicate_kept_once(svc: Any, http: Any, nc: Any) -> None:
    ws, welcome = await open_ws(http, svc)
    assert (await say(ws, "same-id"))["duplicate"] is False
    await ws.close()
    ws2, _ = await open_ws(http, svc, token=welcome["token"])
    again = await say(ws2, "same-id")
    assert again["status"] == "sent" and again["duplicate"] is True
    assert len(await inbound_with_id(nc.jetstream(), f"webchat:demo:{welcome['visitor']}:same-id")) == 1
    await ws2.close()


async def test_bad_frames_get_a_clear_error_and_the_socket_keeps_working(svc: Any, http: Any) -> None:
    ws, _ = await open_ws(http, svc)
    cases: list[tuple[Any, str, str | None]] = [
        ("this is not json", "bad_frame", None),
        ([1, 2], "bad_frame", None),
        ({"type": "message", "text": "no id"}, "bad_frame", None),
        ({"type": "message", "id": "has space", "text": "x"}, "bad_frame", None),
        ({"type": "message", "id": "x" * 65, "text": "x"}, "bad_frame", None),
        ({"type": "message", "id": "e1", "text": "   "}, "bad_frame", "e1"),
        ({"type": "message", "id": "e2", "text": 5}, "bad_frame", "e2"),
        ({"type": "shout", "id": "e3", "text": "x"}, "bad_frame", "e3"),
        ({"type": "message", "id": "e4", "text": "y" * (MAX_TEXT + 1)}, "too_large", "e4"),
        ({"type": "message", "id": "e5", "text": "z" * (MAX_FRAME + 10)}, "too_large", "e5"),
    ]
    for payload, code, client_id in cases:
        await ws.send_str(payload if isinstance(payload, str) else json.dumps(payload))
        err = await recv(ws)
        assert err["type"] == "error" and err["code"] == code and err["detail"], (payload, err)
        assert err.get("id") == client_id, (payload, err)
    await ws.send_bytes(b"\x00\x01")
    err = await recv(ws)
    assert (err["type"], err["code"]) == ("error", "bad_frame")
    ok = await say(ws, "after-errors", "y" * MAX_TEXT)
    assert ok["type"] == "ack" and ok["status"] == "sent"
    await ws.close()


async def test_nats_down_answers_unavailable_and_a_retry_after_restart_is_delivered_once(
    svc: Any, http: Any, nats_server: Any
) -> None:
    ws, welcome = await open_ws(http, svc)
    assert (await say(ws, "before"))["status"] == "sent"
    nats_server.stop()
    await wait_for(lambda: not svc.nc.is_connected, what="gateway to notice NATS is gone")
    err = await say(ws, "during-outage")
    assert err == {"type": "error", "id": "during-outage", "code": "unavailable", "detail": "message not sent, please retry"}
    nats_server.start()
    await wait_for(lambda: svc.nc.is_connected, timeout=20, what="gateway to reconnect to NATS")

    async def retried() -> bool:
        frame = await say(ws, "during-outage")  # the widget's retry resends the same id
        return frame["type"] == "ack"

    await wait_for(retried, timeout=20, interval=0.2, what="retry to be acked after NATS came back")
    checker = await bus.connect(nats_server.url, "checker", first_attempts=5)
    try:
        found = await inbound_with_id(checker.jetstream(), f"webchat:demo:{welcome['visitor']}:during-outage")
        assert len(found) == 1
        # The per-replica outbound consumer (its ephemeral consumer died with
        # the server) is recreated and live replies flow again.
        seq = await publish_reply(checker.jetstream(), welcome["visitor"], "back again")
        msg = await ws.receive(timeout=scaled(30))
        assert json.loads(msg.data)["seq"] == seq
    finally:
        await checker.close()
    await ws.close()


# -- operator replies -----------------------------------------------------------


async def test_reply_is_pushed_to_every_socket_of_that_visitor_only(svc: Any, http: Any, nc: Any) -> None:
    await wait_for(lambda: consumer_ready(svc), what="outbound consumer")
    a1, wa = await open_ws(http, svc)
    a2, _ = await open_ws(http, svc, token=wa["token"])
    b, wb = await open_ws(http, svc)
    js = nc.jetstream()
    seq = await publish_reply(js, wa["visitor"], "Hello Ann")
    for ws in (a1, a2):
        reply = await recv(ws)
        assert reply["type"] == "reply" and reply["seq"] == seq
        assert (reply["text"], reply["operator"], reply["auto"]) == ("Hello Ann", "Olga", False)
        assert reply["id"] == f"out-{wa['visitor']}-0-Hello Ann" and reply["at"]
    # B's next frame is its own reply: A's never reached it.
    seq_b = await publish_reply(js, wb["visitor"], "Hello Bob")
    reply_b = await recv(b)
    assert (reply_b["seq"], reply_b["text"]) == (seq_b, "Hello Bob")
    for ws in (a1, a2, b):
        await ws.close()


async def test_reconnect_with_since_gets_exactly_the_missed_replies_in_order(svc: Any, http: Any, nc: Any) -> None:
    js = nc.jetstream()
    ws, welcome = await open_ws(http, svc)
    visitor = welcome["visitor"]
    await wait_for(lambda: consumer_ready(svc), what="outbound consumer")
    first = await publish_reply(js, visitor, "one", n=1)
    assert (await recv(ws))["seq"] == first
    await ws.close()
    missed = [await publish_reply(js, visitor, text, n=i) for i, text in enumerate(["two", "three", "four"], start=2)]
    await publish_reply(js, "someone-else-entirely", "not yours")
    ws2, _ = await open_ws(http, svc, token=welcome["token"], since=first)
    got = [await recv(ws2) for _ in missed]
    assert [(f["seq"], f["text"]) for f in got] == list(zip(missed, ["two", "three", "four"], strict=True))
    live = await publish_reply(js, visitor, "five", n=5)
    assert (await recv(ws2))["seq"] == live  # nothing extra was replayed before it
    await ws2.close()
    ws3, _ = await open_ws(http, svc, token=welcome["token"])  # a new page: the whole history
    everything = [await recv(ws3) for _ in range(5)]
    assert [f["text"] for f in everything] == ["one", "two", "three", "four", "five"]
    await ws3.close()


async def test_every_replica_pushes_to_its_own_sockets_and_accepts_the_others_tokens(
    svc: Any, http: Any, nc: Any, nats_server: Any
) -> None:
    other = await start(nats_server.url)
    try:
        for s in (svc, other):
            await wait_for(lambda s=s: consumer_ready(s), what="outbound consumer")
        ws1, welcome = await open_ws(http, svc)
        ws2, again = await open_ws(http, other, token=welcome["token"])
        assert again["visitor"] == welcome["visitor"]
        seq = await publish_reply(nc.jetstream(), welcome["visitor"], "to both replicas")
        # A replica just started may also tell the page its availability once its watchers have caught up.
        assert (await _next_of(ws1, "reply"))["seq"] == seq
        assert (await _next_of(ws2, "reply"))["seq"] == seq
        await ws1.close()
        await ws2.close()
    finally:
        await other.stop()


async def test_stopping_closes_sockets_with_going_away(nats_server: Any, nc: Any, http: Any) -> None:
    await bind_widget_accounts(nc)
    service = await start(nats_server.url)
    ws, _ = await open_ws(http, service)
    await service.stop()
    msg = await ws.receive(timeout=scaled(10))
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert (msg.data, msg.extra) == (1001, "going away")


# -- HTTP -------------------------------------------------------------------------


async def test_demo_widget_and_service_endpoints_are_served(svc: Any, http: Any) -> None:
    async with http.get(f"{base(svc)}/widget.js") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/javascript")
        assert "max-age" in resp.headers["Cache-Control"]
        assert "openlinesWidget" in await resp.text()
    async with http.get(f"{base(svc)}/demo") as resp:
        assert resp.status == 200
        page = await resp.text()
        assert '<script src="/widget.js" data-account="demo"' in page and "Acme" in page
    async with http.get(f"{base(svc)}/healthz") as resp:
        assert resp.status == 200
    await wait_for(lambda: consumer_ready(svc), what="outbound consumer")
    async with http.get(f"{base(svc)}/readyz") as resp:
        assert resp.status == 200, await resp.text()
    ws, _ = await open_ws(http, svc)
    await say(ws, "metric-1")
    async with http.get(f"{base(svc)}/metrics") as resp:
        assert resp.status == 404  # not on the public port: the ingress routes it
    async with http.get(f"http://127.0.0.1:{svc.metrics_port}/metrics") as resp:
        text = await resp.text()
        assert "openlines_webchat_messages_published_total" in text
        assert "openlines_webchat_open_sockets" in text
        assert "openlines_webchat_replies_pushed_total" in text
        assert "openlines_webchat_publish_failures_total" in text
    await ws.close()


async def test_demo_page_uses_the_widget_public_url_when_set(nats_server: Any, nc: Any, http: Any) -> None:
    service = await start(nats_server.url, widget_public_url="https://chat.example.com/")
    try:
        async with http.get(f"{base(service)}/demo") as resp:
            assert '<script src="https://chat.example.com/widget.js"' in await resp.text()
    finally:
        await service.stop()


async def test_the_widget_is_told_whether_someone_can_answer_now_and_when_that_changes(
    svc: runner.Service[Settings], http: aiohttp.ClientSession, nc: Any, nats_server: Any
) -> None:
    """Not "Online" while every operator of the line is away: the welcome says whether an operator
    of the account's line is online, and a change is pushed to the open sockets."""
    from support import running_router

    from openlines.commands import SetStatus, call

    async with running_router(nats_server.url):
        ws, welcome = await open_visitor(http, base(svc))
        assert welcome["available"] is False  # anna, the line's only operator, is offline
        await call(nc, "status", SetStatus(operator_id="anna", status="online"))
        assert await _next_of(ws, "availability") == {"type": "availability", "available": True}
        ws2, welcome2 = await open_visitor(http, base(svc), account="shop")  # the same line
        assert welcome2["available"] is True
        await call(nc, "status", SetStatus(operator_id="anna", status="away"))
        assert (await _next_of(ws, "availability"))["available"] is False
        assert (await _next_of(ws2, "availability"))["available"] is False
        await ws.close()
        await ws2.close()


async def _next_of(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        frame = await recv(ws, timeout=scaled(15))
        if frame["type"] == kind:
            return frame
