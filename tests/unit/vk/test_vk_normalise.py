from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway_vk.normalise import CallbackError, attachment, parse_callback, parse_message_new, to_inbound


def body(**fields: Any) -> bytes:
    return json.dumps({"type": "message_new", "group_id": 1, "event_id": "e1", "secret": "s", **fields}).encode()


def message(**fields: Any) -> dict[str, Any]:
    return {"message": {"id": 10, "date": 1, "peer_id": 5, "from_id": 5, "text": "hi", **fields}}


def test_the_envelope_is_parsed() -> None:
    cb = parse_callback(body(object=message()))
    assert (cb.type, cb.group_id, cb.event_id, cb.secret) == ("message_new", 1, "e1", "s")
    confirmation = parse_callback(b'{"type": "confirmation", "group_id": 7}')
    assert (confirmation.event_id, confirmation.secret) == ("", None)
    # Older API versions send no event_id, or one we cannot put in a message id: told apart by the body instead.
    for raw in (body(event_id=5), body(event_id="a b"), body(event_id=None)):
        assert parse_callback(raw).event_id == ""


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b'"x"',
        body(type=""),
        body(group_id="1"),
        body(group_id=True),
        body(object=[]),
    ],
)
def test_bad_envelopes_are_400(raw: bytes) -> None:
    with pytest.raises(CallbackError) as err:
        parse_callback(raw)
    assert err.value.status == 400


def test_a_message_becomes_an_inbound_envelope() -> None:
    msg = parse_message_new(message(peer_id=2000000001, from_id=42, text="hello"))
    assert msg is not None
    env = to_inbound("shop", "e1", msg, "Ivan Petrov", datetime(2025, 1, 1, tzinfo=UTC))
    assert (env.id, env.chat_id, env.user_id, env.text, env.profile.name, env.channel_msg_id) == (
        "vk:shop:e1",
        "2000000001",
        "42",
        "hello",
        "Ivan Petrov",
        "10",
    )


def test_chat_messages_without_an_id_use_the_conversation_message_id() -> None:
    msg = parse_message_new(message(id=0, peer_id=2000000001, conversation_message_id=77))
    assert msg is not None and msg.channel_msg_id == "2000000001_77"


def test_empty_and_service_messages_are_skipped_forwarded_ones_are_quoted() -> None:
    assert parse_message_new(message(text="")) is None
    assert parse_message_new(message(action={"type": "chat_pin_message"})) is None
    fwd = parse_message_new(message(text="", fwd_messages=[{"text": "line 1\nline 2"}, {"text": ""}]))
    assert fwd is not None and fwd.text == "» line 1\n» line 2"


@pytest.mark.parametrize(
    ("obj", "detail"),
    [
        ({}, "object.message"),
        (message(text=None), "text"),
        (message(peer_id="5"), "peer_id"),
        (message(from_id=0), "must not be 0"),
    ],
)
def test_bad_messages_are_400_with_the_field(obj: dict[str, Any], detail: str) -> None:
    with pytest.raises(CallbackError, match=detail):
        parse_message_new(obj)


def test_attachments_keep_type_ids_and_urls() -> None:
    doc = attachment(
        {"type": "doc", "doc": {"id": 3, "owner_id": 5, "title": "cv.pdf", "size": 1200, "ext": "pdf", "url": "https://vk/doc"}}
    )
    assert doc is not None
    assert (doc.kind, doc.name, doc.size, doc.ref, doc.url, doc.extra) == (
        "file",
        "cv.pdf",
        1200,
        "doc5_3",
        "https://vk/doc",
        {"vk_type": "doc", "ext": "pdf"},
    )
    voice = attachment(
        {"type": "audio_message", "audio_message": {"id": 1, "owner_id": 5, "duration": 4, "link_ogg": "https://o"}}
    )
    assert voice is not None and (voice.kind, voice.url, voice.mime, voice.extra["duration"]) == (
        "voice",
        "https://o",
        "audio/ogg",
        "4",
    )
    sticker = attachment(
        {"type": "sticker", "sticker": {"sticker_id": 9, "images": [{"url": "https://s", "width": 64, "height": 64}]}}
    )
    assert sticker is not None and (sticker.kind, sticker.ref, sticker.url) == ("sticker", "9", "https://s")
    wall = attachment({"type": "wall", "wall": {"id": 2, "owner_id": -1}})
    assert wall is not None and (wall.kind, wall.ref, wall.extra) == ("file", "wall-1_2", {"vk_type": "wall"})
    assert attachment("junk") is None and attachment({"type": 5}) is None


def test_a_location_becomes_a_location_attachment() -> None:
    msg = parse_message_new(message(text="", geo={"type": "point", "coordinates": {"latitude": 55.7, "longitude": 37.6}}))
    assert msg is not None
    [loc] = msg.attachments
    assert (loc.kind, loc.extra) == ("location", {"latitude": "55.7", "longitude": "37.6"})
