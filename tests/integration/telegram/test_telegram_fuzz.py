"""Property-based fuzzing of the Telegram webhook body over real HTTP:
never a 500, and a body that is not a complete update never publishes."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.telegram import SUPPORT, fake_telegram, running_gateway, stream_size

# OPENLINES_FUZZ_EXAMPLES: make chaos runs 10,000 per test.
FUZZ = settings(
    max_examples=int(os.environ.get("OPENLINES_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
not_int = st.none() | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
not_str = st.none() | st.lists(st.text(max_size=3), max_size=2) | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
user = st.fixed_dictionaries({"id": st.integers(1, 2**40), "is_bot": st.booleans(), "first_name": st.text(max_size=10)})
message = st.fixed_dictionaries(
    {
        "message_id": st.integers(0, 2**31),
        "date": st.integers(0, 2**31),
        "chat": st.fixed_dictionaries({"id": st.integers(-(2**52), 2**52), "type": st.sampled_from(["private", "group"])}),
    },
    optional={
        "text": st.text(max_size=50),
        "from": user,
        "caption": st.text(max_size=10),
        "photo": st.lists(
            st.fixed_dictionaries(
                {
                    "file_id": st.text(max_size=5),
                    "file_unique_id": st.text(max_size=5),
                    "width": st.integers(0),
                    "height": st.integers(0),
                }
            ),
            max_size=2,
        ),
        "x_unknown": json_values,
    },
)
# What identifies the chat and the message: without these an update cannot be published (it is kept as a
# dead letter). Fields the gateway does not need (the date, the chat type, is_bot...) are made up instead,
# so a message broken there is published: test_fuzzed_complete_messages_are_published_exactly_once.
BREAKS: dict[str, Any] = {
    "message_id": not_int,
    "chat": not_str | st.integers(),
    "chat.id": not_int,
}


def _break(msg: dict[str, Any], where: str, value: Any, drop: bool) -> dict[str, Any]:
    msg = json.loads(json.dumps(msg))
    target, key = (msg["chat"], where.split(".")[1]) if "." in where else (msg, where)
    if drop:
        del target[key]
    else:
        target[key] = value
    return msg


broken_message = st.sampled_from(sorted(BREAKS)).flatmap(
    lambda where: st.builds(_break, message, st.just(where), BREAKS[where], st.booleans())
)
finite = st.floats(allow_nan=False, allow_infinity=False)
bad_update_id = st.none() | st.integers(max_value=-1) | st.text(max_size=5) | finite | st.booleans()
never_publishable = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda u, m: json.dumps({"update_id": u, "message": m}).encode(), st.integers(0, 2**40), broken_message),
    st.builds(lambda u, m: json.dumps({"update_id": u, "message": m}).encode(), bad_update_id, message),
    st.builds(lambda m: json.dumps({"message": m}).encode(), message),
    st.builds(lambda u, m: json.dumps({"update_id": u, "edited_message": m}).encode(), st.integers(0, 2**40), broken_message),
    # bytes that are not UTF-8 inside a JSON string (the message also lacks its required fields)
    st.binary(max_size=20).map(lambda b: b'{"update_id": 1, "message": {"text": "' + b + b'"}}'),
)


@pytest.fixture
async def webhook(nc: Any, nats_server: Any) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Any]]:
    async with fake_telegram() as peer, running_gateway(nats_server.url, peer) as svc, aiohttp.ClientSession() as http:
        yield http, f"http://127.0.0.1:{svc.port}/telegram/support_bot", nc


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, Any]:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SUPPORT["secret"], "Content-Type": "application/json"}
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


@FUZZ
@given(body=never_publishable)
@example(body=b'{"update_id": 1, "message": {"text": "\x8f"}}')
async def test_fuzzed_broken_bodies_never_give_a_500_and_never_publish(
    webhook: tuple[aiohttp.ClientSession, str, Any], body: bytes
) -> None:
    http, url, nc = webhook
    status, answer = await post(http, url, body)
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert answer["error"] == "bad_update" and answer["detail"]
    assert await stream_size(nc) == 0


@FUZZ
@given(update_id=st.integers(0, 2**40), msg=message)
async def test_fuzzed_complete_messages_are_published_exactly_once(
    webhook: tuple[aiohttp.ClientSession, str, Any], update_id: int, msg: dict[str, Any]
) -> None:
    http, url, nc = webhook
    before = await stream_size(nc)
    body = json.dumps({"update_id": update_id, "message": msg}).encode()
    status, answer = await post(http, url, body)
    assert status == 200, answer
    stored = await stream_size(nc)
    # Without text or media a message is a service message and is dropped; a
    # repeated update_id is a duplicate.
    assert stored - before in ((0,) if answer["duplicate"] else (0, 1))
    status, _again = await post(http, url, body)
    assert status == 200 and await stream_size(nc) == stored
