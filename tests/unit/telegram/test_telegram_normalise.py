"""Telegram updates -> Inbound envelopes (aiogram types; no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway_telegram.normalise import BadUpdate, normalise, parse_update

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def run(update: dict[str, Any]) -> Any:
    return normalise("sales", 4242, parse_update(json.dumps(update).encode()), NOW)


def msg(**fields: Any) -> dict[str, Any]:
    return {
        "message_id": 9,
        "date": 1,
        "chat": {"id": 555, "type": "private"},
        "from": {"id": 555, "is_bot": False, "first_name": "Ann"},
        **fields,
    }


def test_text_message_has_deterministic_id_chat_user_and_profile() -> None:
    r = run(
        {
            "update_id": 7,
            "message": msg(
                text="hi",
                **{
                    "from": {
                        "id": 555,
                        "is_bot": False,
                        "first_name": "Ann",
                        "last_name": "Lee",
                        "username": "ann",
                        "language_code": "en",
                    }
                },
            ),
        }
    )
    env = r.inbound
    assert r.kind == "message"
    assert env.id == "telegram:sales:4242:7"
    assert (env.chat_id, env.user_id, env.text, env.channel_msg_id) == ("555", "555", "hi", "9")
    assert (env.profile.name, env.profile.username, env.profile.language, env.profile.phone) == ("Ann Lee", "ann", "en", "")
    assert env.received_at == NOW


def test_group_message_chat_is_the_group_and_user_the_sender() -> None:
    env = run({"update_id": 1, "message": msg(text="hi", chat={"id": -100123, "type": "supergroup", "title": "Shop"})}).inbound
    assert (env.chat_id, env.user_id) == ("-100123", "555")


def test_someone_elses_contact_is_an_attachment_but_not_the_clients_phone() -> None:
    env = run({"update_id": 1, "message": msg(contact={"phone_number": "+1555", "first_name": "Bob", "user_id": 999})}).inbound
    assert env.profile.phone == ""
    assert env.attachments[0].extra["phone"] == "+1555" and env.attachments[0].name == "Bob"


def test_animation_is_reported_once_not_also_as_a_document() -> None:
    anim = {"file_id": "a1", "file_unique_id": "u", "width": 1, "height": 1, "duration": 2, "mime_type": "video/mp4"}
    env = run({"update_id": 1, "message": msg(animation=anim, document={"file_id": "a1", "file_unique_id": "u"})}).inbound
    assert [(a.kind, a.extra.get("animation")) for a in env.attachments] == [("video", "true")]


def test_sticker_video_and_venue() -> None:
    sticker = {
        "file_id": "s",
        "file_unique_id": "u",
        "type": "regular",
        "width": 1,
        "height": 1,
        "is_animated": True,
        "is_video": False,
        "emoji": "👍",
    }
    env = run({"update_id": 1, "message": msg(sticker=sticker)}).inbound
    assert (env.attachments[0].kind, env.attachments[0].mime, env.attachments[0].extra["emoji"]) == (
        "sticker",
        "application/x-tgsticker",
        "👍",
    )
    video = {"file_id": "v", "file_unique_id": "u", "width": 640, "height": 480, "duration": 5, "file_name": "a.mp4"}
    env = run({"update_id": 2, "message": msg(video=video, caption="look")}).inbound
    assert (env.text, env.attachments[0].kind, env.attachments[0].name) == ("look", "video", "a.mp4")
    venue = {"location": {"latitude": 1.5, "longitude": 2.5}, "title": "Shop", "address": "Main st 1"}
    env = run({"update_id": 3, "message": msg(venue=venue, location={"latitude": 1.5, "longitude": 2.5})}).inbound
    [loc] = env.attachments
    assert (loc.kind, loc.name, loc.extra["address"], loc.extra["latitude"]) == ("location", "Shop", "Main st 1", "1.5")


def test_callback_without_message_goes_to_the_users_private_chat() -> None:
    r = run(
        {
            "update_id": 1,
            "callback_query": {
                "id": "q",
                "from": {"id": 31, "is_bot": False, "first_name": "C"},
                "chat_instance": "i",
                "data": "yes",
                "inline_message_id": "im",
            },
        }
    )
    assert (r.callback_query_id, r.inbound.chat_id, r.inbound.text) == ("q", "31", "yes")


def test_game_callback_is_only_acknowledged() -> None:
    r = run(
        {
            "update_id": 1,
            "callback_query": {
                "id": "q",
                "from": {"id": 31, "is_bot": False, "first_name": "C"},
                "chat_instance": "i",
                "game_short_name": "g",
            },
        }
    )
    assert r.inbound is None and r.callback_query_id == "q"


def test_other_update_types_are_ignored_without_validating_them() -> None:
    r = run({"update_id": 1, "chat_join_request": {"whatever": True}})
    assert r.inbound is None and r.kind == "ignored:chat_join_request"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"null", "JSON object"),
        (b'{"update_id": -1}', "update_id"),
        (b'{"update_id": true}', "update_id"),
        (b'{"update_id": 1.5}', "update_id"),
        (b'{"update_id": 1, "message": {"message_id": 1, "date": 1, "chat": {"id": "x", "type": "private"}}}', "message.chat.id"),
        (b'{"update_id": 1, "message": "text"}', "message"),
    ],
)
def test_bad_bodies_are_refused_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(BadUpdate) as err:
        parse_update(body)
    assert reason in err.value.detail


def test_fields_the_gateway_does_not_read_never_cost_the_client_the_message() -> None:
    """Missing or mistyped nested fields (is_bot, file_unique_id, a size) are made up; what identifies the chat is not."""
    body = {
        "update_id": 40,
        "message": {
            "message_id": 1,
            "chat": {"id": 5, "type": "private"},
            "from": {"id": 5, "first_name": "Ann"},  # no is_bot, no date on the message
            "caption": "my receipt",
            "photo": [{"file_id": "AgAC", "width": "wide", "height": 1}],  # no file_unique_id, a width that is text
            "forward_origin": {"type": "hidden_user", "date": 1, "sender_user_name": "Secret Sam"},
        },
    }
    env = normalise("shop", 1, parse_update(json.dumps(body).encode()), NOW).inbound
    assert env is not None
    assert env.text == "(forwarded from Secret Sam) my receipt" and env.chat_id == "5" and env.profile.name == "Ann"
    assert [(a.kind, a.ref) for a in env.attachments] == [("image", "AgAC")]
    for broken in ({"message_id": 1, "text": "no chat"}, {"message_id": 1, "chat": {"type": "private"}, "text": "no chat id"}):
        with pytest.raises(BadUpdate, match=r"message\.chat"):
            parse_update(json.dumps({"update_id": 41, "message": broken}).encode())


# Every field of Update in the Bot API (9.x) besides the three the gateway subscribes to
# (setWebhook allowed_updates): answered and logged, never a 400 that would make
# Telegram retry it, whatever its content - the gateway does not validate them.
OTHER_UPDATE_TYPES = [
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
]


@pytest.mark.parametrize("kind", OTHER_UPDATE_TYPES)
@pytest.mark.parametrize("content", [{}, {"chat": {"id": "not a number"}}, [1, 2], None, "text"])
def test_every_other_update_type_of_the_bot_api_is_ignored_whatever_it_holds(kind: str, content: Any) -> None:
    r = run({"update_id": 7, kind: content})
    assert r.inbound is None and r.kind == f"ignored:{kind}"
