"""Property-based fuzzing of the WhatsApp webhook over real HTTP: an unsigned or forged body is refused and
stores nothing; a signed body is never a 500 and never publishes what is not a client's message; a client's
message, whatever its type and fields, is published exactly once."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.whatsapp import APP_SECRET, SHOP, fake_whatsapp, running_gateway

from gateway_whatsapp.http import SIGNATURE_HEADER, signature
from openlines import subjects

# OPENLINES_FUZZ_EXAMPLES: make chaos runs 10,000 per test.
FUZZ = settings(
    max_examples=int(os.environ.get("OPENLINES_FUZZ_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
wamid = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789=+/", min_size=8, max_size=40).map(
    lambda s: "wamid." + s
)
KNOWN = ["text", "image", "audio", "video", "document", "sticker", "location", "contacts", "interactive", "button"]
types = st.sampled_from([*KNOWN, "reaction", "unsupported", "system", "order", "edit", "revoke", "some_future_type", ""])
# What a forger can put in the header: anything printable, or the right shape with another digest.
forged = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80) | st.from_regex(
    r"\Asha256=[0-9a-f]{64}\Z"
)


@st.composite
def client_message(draw: Any) -> dict[str, Any]:
    kind = draw(types)
    msg: dict[str, Any] = {
        "from": draw(st.from_regex(r"\A[1-9][0-9]{6,14}\Z")),
        "id": draw(wamid),
        "timestamp": draw(st.one_of(st.integers(0, 2**40).map(str), st.text(max_size=5), st.none())),
        "type": kind,
    }
    if kind:
        msg[kind] = draw(json_values)
    for extra in draw(st.lists(st.sampled_from(["context", "errors", "referral", "x_unknown"]), max_size=2, unique=True)):
        msg[extra] = draw(json_values)
    return msg


def wrap(phone_number_id: str, value_extra: dict[str, Any]) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": phone_number_id}, **value_extra}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}]}


not_a_client_message = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    # messages without a usable id or sender: kept as dead letters
    st.builds(
        lambda m, drop: json.dumps(
            wrap(SHOP["phone_number_id"], {"messages": [{k: v for k, v in m.items() if k != drop}]})
        ).encode(),
        client_message(),
        st.sampled_from(["id", "from"]),
    ),
    # statuses, errors, other fields, other objects
    st.builds(lambda v: json.dumps(wrap(SHOP["phone_number_id"], {"statuses": v})).encode(), json_values),
    st.builds(lambda v: json.dumps(wrap(SHOP["phone_number_id"], {"errors": v})).encode(), json_values),
    st.builds(lambda v: json.dumps({"object": "whatsapp_business_account", "entry": v}).encode(), json_values),
    # a number nobody configured
    st.builds(lambda m: json.dumps(wrap("424242", {"messages": [m]})).encode(), client_message()),
    st.binary(max_size=20).map(lambda b: b'{"object": "whatsapp_business_account", "entry": [{"x": "' + b + b'"}]}'),
)


@pytest.fixture
async def webhook(nc: Any, nats_server: Any) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Any]]:
    async with fake_whatsapp() as peer, running_gateway(nats_server.url, peer) as svc, aiohttp.ClientSession() as http:
        yield http, f"http://127.0.0.1:{svc.port}/whatsapp/main", nc


async def post(http: aiohttp.ClientSession, url: str, body: bytes, sig: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(APP_SECRET, body) if sig is None else sig}
    async with http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def size(nc: Any, stream: str = subjects.STREAM_IN) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.messages)


@FUZZ
@given(body=st.binary(max_size=500) | json_values.map(lambda v: json.dumps(v).encode()), sig=forged)
async def test_unsigned_or_forged_bodies_are_refused_and_store_nothing(
    webhook: tuple[aiohttp.ClientSession, str, Any], body: bytes, sig: str
) -> None:
    http, url, nc = webhook
    status, answer = await post(http, url, body, sig=sig if sig != signature(APP_SECRET, body) else "x")
    assert status == 401 and answer["error"] == "bad_signature"
    assert await size(nc) == 0 and await size(nc, subjects.STREAM_EVT) == 0


@FUZZ
@given(body=not_a_client_message)
@example(body=b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": "\x8f"}]}]}')
async def test_signed_bodies_without_a_client_message_never_give_a_500_and_never_publish(
    webhook: tuple[aiohttp.ClientSession, str, Any], body: bytes
) -> None:
    http, url, nc = webhook
    status, answer = await post(http, url, body)
    assert status == 200, (status, answer)
    assert await size(nc) == 0


@FUZZ
@given(msg=client_message())
async def test_signed_client_messages_of_any_shape_are_published_exactly_once(
    webhook: tuple[aiohttp.ClientSession, str, Any], msg: dict[str, Any]
) -> None:
    http, url, nc = webhook
    before = await size(nc)
    body = json.dumps(wrap(SHOP["phone_number_id"], {"messages": [msg], "contacts": [{"wa_id": msg["from"]}]})).encode()
    status, answer = await post(http, url, body)
    assert status == 200, answer
    stored = await size(nc)
    assert stored - before == (0 if answer["duplicates"] else 1), answer
    status, again = await post(http, url, body)
    assert status == 200 and again["duplicates"] == 1 and await size(nc) == stored
