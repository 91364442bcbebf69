"""The VK Callback API endpoint over real sockets: a real nats-server, the gateway in-process, the fake VK API."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peers.vk_api import FakeVk
from support.timing import wait_for
from support.vk import (
    ACCOUNT,
    CONFIRMATION,
    GROUP_ID,
    SECRET,
    connections,
    fake_vk,
    groups_json,
    in_count,
    published,
    running_gateway,
    sender,
)

from openlines import bus, runner, subjects
from openlines.envelopes import SessionEvent

EXAMPLES = int(os.environ.get("OPENLINES_FUZZ_EXAMPLES", "150"))  # make chaos runs 10,000


@pytest.fixture
async def vk() -> AsyncIterator[FakeVk]:
    fake = fake_vk(users={1001: ("Ivan", "Petrov"), 1002: ("Olga", "Smirnova")}, confirmation_codes={555: "from-api-77"})
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def gw(nats_server: Any, nc: Any, vk: FakeVk) -> AsyncIterator[runner.Service[Any]]:
    async with running_gateway(nats_server.url, vk.url) as svc:
        yield svc


async def test_confirmation_is_answered_with_the_communitys_string_as_plain_text(gw: Any, http: Any) -> None:
    cb = sender(http, gw)
    assert await cb.post(cb.confirmation()) == (200, CONFIRMATION)
    assert await cb.post(cb.confirmation(with_secret=False)) == (200, CONFIRMATION)


async def test_without_a_configured_string_the_confirmation_code_is_asked_from_vk_once(
    nats_server: Any, nc: Any, vk: FakeVk, http: Any
) -> None:
    async with running_gateway(nats_server.url, vk.url, vk_groups=groups_json(confirmation="")) as svc:
        cb = sender(http, svc)
        assert await cb.post(cb.confirmation()) == (200, "from-api-77")
        assert await cb.post(cb.confirmation()) == (200, "from-api-77")
        assert [c.params["group_id"] for c in vk.calls_of("groups.getCallbackConfirmationCode")] == [str(GROUP_ID)]


async def test_a_new_message_is_published_with_the_clients_name_and_answered_ok(gw: Any, nc: Any, http: Any, vk: FakeVk) -> None:
    cb = sender(http, gw)
    photo = {
        "type": "photo",
        "photo": {
            "id": 457239017,
            "owner_id": 1001,
            "access_key": "k1",
            "sizes": [
                {"type": "s", "url": "https://sun.userapi.com/s.jpg", "width": 75, "height": 50},
                {"type": "x", "url": "https://sun.userapi.com/x.jpg", "width": 604, "height": 403},
            ],
        },
    }
    event = cb.message_new("Where is my order?", from_id=1001, attachments=[photo], event_id="ev-1")
    assert await cb.post(event) == (200, "ok")
    [env] = await published(nc)
    assert (env.id, env.channel, env.account) == (f"vk:{ACCOUNT}:ev-1", "vk", ACCOUNT)
    assert (env.chat_id, env.user_id, env.text, env.profile.name) == ("1001", "1001", "Where is my order?", "Ivan Petrov")
    [att] = env.attachments
    assert (att.kind, att.ref, att.url) == ("image", "photo1001_457239017_k1", "https://sun.userapi.com/x.jpg")
    assert env.channel_msg_id == str(event["object"]["message"]["id"])
    # The name is cached: a second message does not ask VK again.
    assert await cb.post(cb.message_new("and another", from_id=1001)) == (200, "ok")
    assert [c.params["user_ids"] for c in vk.calls_of("users.get")] == ["1001"]
    assert vk.calls_of("users.get")[0].params["v"] == "5.199"


async def test_the_same_event_twice_is_stored_once(gw: Any, nc: Any, http: Any) -> None:
    cb = sender(http, gw)
    event = cb.message_new("hello", event_id="ev-dup")
    assert await cb.post(event) == (200, "ok")
    assert await cb.post(event, retry=1) == (200, "ok")
    assert [e.id for e in await published(nc)] == [f"vk:{ACCOUNT}:ev-dup"]


async def test_a_slow_users_get_does_not_hold_the_answer_the_message_goes_without_a_name(
    gw: Any, nc: Any, http: Any, vk: FakeVk
) -> None:
    vk.users_gate = asyncio.Event()  # users.get hangs until released
    cb = sender(http, gw)
    assert await cb.post(cb.message_new("hi", from_id=1002, event_id="ev-slow")) == (200, "ok")
    [env] = await published(nc)
    assert env.profile.name == ""
    vk.users_gate.set()


async def test_a_wrong_secret_or_group_is_refused_with_403_and_nothing_is_published(gw: Any, nc: Any, http: Any) -> None:
    cb = sender(http, gw)
    for body in (
        cb.message_new("x") | {"secret": "wrong"},
        cb.message_new("x") | {"secret": "ключ"},  # non-ASCII must not crash the comparison
        {k: v for k, v in cb.message_new("x").items() if k != "secret"},
        cb.message_new("x") | {"group_id": 999},
        cb.confirmation() | {"secret": "wrong"},
    ):
        status, text = await cb.post(body)
        assert status == 403 and json.loads(text)["error"] == "forbidden"
    # another community's secret does not open this URL
    other = sender(http, gw, "news")
    assert (await cb.post(cb.message_new("x") | {"secret": other.secret}))[0] == 403
    assert await in_count(nc) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"group_id": GROUP_ID, "secret": SECRET, "event_id": "e"}).encode(), '"type"'),
        (json.dumps({"type": "message_new", "secret": SECRET, "event_id": "e"}).encode(), '"group_id"'),
    ],
)
async def test_bodies_that_cannot_be_checked_get_400_with_the_reason(
    gw: Any, nc: Any, http: Any, body: bytes, reason: str
) -> None:
    """Not a Callback API request at all (no group to check the secret against): refused, nothing stored."""
    status, text = await sender(http, gw).post(body)
    assert status == 400
    answer = json.loads(text)
    assert answer["error"] == "bad_request" and reason in answer["detail"]
    assert await in_count(nc) == 0


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({}, "object.message"),
        ({"message": {"id": 1, "date": 1, "peer_id": 5, "text": "hi"}}, "from_id"),
        ({"message": {"id": 1, "date": 1, "peer_id": 5, "from_id": 5, "text": 7}}, "text"),
    ],
)
async def test_a_signed_event_we_cannot_read_is_answered_ok_and_kept_as_a_dead_letter(
    gw: Any, nc: Any, http: Any, obj: dict[str, Any], reason: str
) -> None:
    """VK counts every answer but "ok" as a failure and switches a failing server off: answer ok, keep the event."""
    cb = sender(http, gw)
    status, text = await cb.post(cb.event("message_new", obj, event_id="bad-1"))
    assert (status, text) == (200, "ok")
    assert await in_count(nc) == 0

    async def dead() -> list[SessionEvent]:
        rows = await bus.read_subject(nc.jetstream(), subjects.STREAM_EVT, subjects.event("dead_letter"))
        return [msgspec.json.decode(d, type=SessionEvent) for _, d in rows]

    [evt] = await wait_for(dead, what="the dead letter")
    assert evt.account == ACCOUNT and reason in evt.reason and evt.id == f"dead:vk:{ACCOUNT}:bad-1"


async def test_events_without_event_id_are_answered_ok_and_deduplicated_by_their_body(gw: Any, nc: Any, http: Any) -> None:
    """Older API versions send no event_id; VK's resend of the same body is stored once."""
    cb = sender(http, gw)
    legacy = {k: v for k, v in cb.message_new("from an old API version").items() if k != "event_id"}
    for _ in range(2):  # VK's retry sends the same body again
        assert await cb.post(legacy) == (200, "ok")
    other = {k: v for k, v in cb.message_new("a second message").items() if k != "event_id"}
    assert await cb.post(other) == (200, "ok")
    for kind, obj in (("group_join", {"user_id": 1, "join_type": "approved"}), ("wall_post_new", {"id": 28, "text": "Post"})):
        body = {k: v for k, v in cb.event(kind, obj).items() if k != "event_id"}
        assert await cb.post(body) == (200, "ok")
    got = await wait_for(lambda: published(nc), what="published")
    assert sorted(m.text for m in got) == ["a second message", "from an old API version"]
    assert await in_count(nc) == 2


async def test_an_oversize_body_gets_413_and_an_unknown_account_404(gw: Any, nc: Any, http: Any) -> None:
    cb = sender(http, gw)
    big = cb.message_new("x" * (1024 * 1024 + 10))
    status, text = await cb.post(big)
    assert status == 413 and json.loads(text)["error"] == "too_large"

    # chunked, without Content-Length
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536
        yield json.dumps(cb.message_new("x")).encode()

    async with http.post(cb.url, data=chunks()) as resp:
        assert resp.status == 413
    async with http.post(f"http://127.0.0.1:{gw.port}/vk/nobody", json=cb.message_new("x")) as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "unknown_account"
    assert await in_count(nc) == 0


async def test_other_events_are_acknowledged_and_not_published(gw: Any, nc: Any, http: Any) -> None:
    cb = sender(http, gw)
    for kind in ("message_reply", "message_edit", "message_typing_state", "message_allow", "group_join"):
        assert await cb.post(cb.event(kind, {"user_id": 1001})) == (200, "ok")
    # a service message (someone joined a chat) is not a client message either
    service = cb.message_new("")
    service["object"]["message"]["action"] = {"type": "chat_invite_user", "member_id": 5}
    assert await cb.post(service) == (200, "ok")
    assert await in_count(nc) == 0


async def test_nats_down_answers_503_and_the_retried_event_is_stored_once(
    nats_server: Any, nc: Any, vk: FakeVk, http: Any
) -> None:
    # nc: the streams exist (made by the admin identity, as the bootstrap job does)
    async with running_gateway(nats_server.url, vk.url) as svc:
        cb = sender(http, svc)
        event = cb.message_new("are you there?", event_id="ev-down")
        nats_server.stop()
        status, text = await cb.post(event)
        assert status == 503 and json.loads(text)["error"] == "unavailable"
        nats_server.start()
        await wait_for(lambda: svc.nc.is_connected, timeout=15, what="gateway reconnected")
        assert await cb.post(event, retry=1) == (200, "ok")
        assert await cb.post(event, retry=2) == (200, "ok")
    nc = await bus.connect(nats_server.url, "check", first_attempts=5)
    try:
        assert [e.id for e in await published(nc)] == [f"vk:{ACCOUNT}:ev-down"]
    finally:
        await nc.close()


# -- fuzzing ----------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(["type", "event_id", "v", "object", "group_id", "secret", "message"])
_envelope = st.dictionaries(_keys, _json, max_size=6).map(lambda d: d | {"group_id": GROUP_ID} if "type" in d else d)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    body=st.binary(max_size=300)
    | _envelope.map(lambda d: json.dumps(d).encode())
    | _json.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=20).map(lambda b: b'{"type": "' + b + b'"}')  # bytes that are not UTF-8 inside a JSON string
)
@example(body=b'{"type": "\x8f"}')  # found at 10,000 examples: it gave a 500
async def test_fuzzed_bodies_never_get_a_500_and_never_publish(gw: Any, nc: Any, http: Any, body: bytes) -> None:
    status, text = await sender(http, gw).post(body)
    assert status in (200, 400, 403), status
    assert "Traceback" not in text
    assert await in_count(nc) == 0


_message = st.fixed_dictionaries(
    {},
    optional={
        "id": _json | st.integers(),
        "date": _json | st.integers(),
        "peer_id": _json | st.integers(),
        "from_id": _json | st.integers(),
        "text": _json | st.text(),
        "attachments": _json | st.lists(st.dictionaries(st.sampled_from(["type", "photo", "doc", "sticker"]), _json)),
        "fwd_messages": _json,
        "geo": _json,
        "action": _json,
    },
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(message=_message)
async def test_fuzzed_messages_with_the_right_secret_never_get_a_500(
    gw: Any, nc: Any, http: Any, message: dict[str, Any]
) -> None:
    cb = sender(http, gw)
    before = await in_count(nc)
    status, text = await cb.post(cb.event("message_new", {"message": message}))
    assert status in (200, 400), (status, text)
    assert "Traceback" not in text
    after = await in_count(nc)
    assert after - before <= 1 and (status == 200 or after == before)


async def test_a_client_typing_is_told_to_the_desk_and_nothing_is_stored(gw: Any, nc: Any, http: Any, nats_server: Any) -> None:
    from openlines import subjects

    heard: list[str] = []

    async def typing(msg: Any) -> None:
        heard.append(msg.subject)

    sub = await nc.subscribe("ol.typing.in.>", cb=typing)
    await bus.flush_all(nc)  # the server has the subscription before anything is said
    cb = sender(http, gw)
    # VK's shape: {"state": "typing", "from_id": <user>, "to_id": -<community>}; odd ones are answered "ok", told nobody.
    for obj in ({"state": "typing", "from_id": "x"}, {"state": "audiomessage", "from_id": 1001}, {"state": "typing"}):
        assert await cb.post(cb.event("message_typing_state", obj)) == (200, "ok")
    assert await cb.post(cb.event("message_typing_state", {"state": "typing", "from_id": 1001, "to_id": -GROUP_ID})) == (
        200,
        "ok",
    )
    try:
        await wait_for(lambda: heard, what="the typing signal")
    except AssertionError as failed:  # core NATS, never stored: say which end was away
        raise AssertionError(f"{failed}; {connections(gw, nc, nats_server)}") from failed
    assert heard == [subjects.typing_in("vk", ACCOUNT, subjects.chat_key("vk", ACCOUNT, "1001"))]
    assert await in_count(nc) == 0
    await sub.unsubscribe()
