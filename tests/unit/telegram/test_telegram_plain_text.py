"""The plain-text fast path of the Telegram webhook gives exactly what aiogram's full path gives,
and takes nothing it was not made for."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.corpus import corpus_files, params

from gateway_telegram.normalise import normalise, parse_update, plain_text

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
ids = st.integers(min_value=1, max_value=2**52)
words = st.text(min_size=0, max_size=40)


def full(body: bytes) -> Any:
    return normalise("shop", 42, parse_update(body), NOW)


@st.composite
def private_texts(draw: Any) -> dict[str, Any]:
    uid = draw(ids)
    user: dict[str, Any] = {"id": uid, "is_bot": draw(st.booleans()), "first_name": draw(words)}
    chat: dict[str, Any] = {"id": uid, "type": "private"}
    for key, values in (("last_name", words), ("username", words), ("language_code", st.sampled_from(["en", "ru", "lv", ""]))):
        if draw(st.booleans()):
            user[key] = draw(values)
    for key in ("first_name", "last_name", "username"):
        if draw(st.booleans()):
            chat[key] = draw(words)
    if draw(st.booleans()):
        user["is_premium"] = draw(st.booleans())
    message = {"message_id": draw(ids), "from": user, "chat": chat, "date": draw(ids), "text": draw(st.text(min_size=1))}
    if draw(st.booleans()):  # how the client's app shows a link (Bot API 7.0)
        preview = {"url": draw(words)} if draw(st.booleans()) else {}
        for key in ("is_disabled", "prefer_small_media", "prefer_large_media", "show_above_text"):
            if draw(st.booleans()):
                preview[key] = draw(st.booleans())
        message["link_preview_options"] = preview
    return {"update_id": draw(st.integers(min_value=0, max_value=2**52)), "message": message}


@settings(max_examples=300, deadline=None)
@given(private_texts())
def test_a_plain_text_gives_what_the_full_path_gives(update: dict[str, Any]) -> None:
    body = json.dumps(update).encode()
    fast = plain_text("shop", 42, body, NOW)
    assert fast is not None
    assert fast == full(body)


def _base() -> dict[str, Any]:
    return {
        "update_id": 10,
        "message": {
            "message_id": 5,
            "from": {"id": 7, "is_bot": False, "first_name": "Vera"},
            "chat": {"id": 7, "type": "private", "first_name": "Vera"},
            "date": 1764763200,
            "text": "hello",
        },
    }


def _with(path: str, value: Any) -> bytes:
    update = _base()
    *parents, last = path.split(".")
    node = update
    for p in parents:
        node = node[p]
    node[last] = value
    return json.dumps(update).encode()


@pytest.mark.parametrize(
    "body",
    [
        _with("message.entities", [{"type": "bold", "offset": 0, "length": 5}]),  # formatting: aiogram's path
        _with("message.chat", {"id": -100, "type": "group", "title": "Team"}),  # not the private chat
        _with("message.chat.id", 8),  # a private chat that is not the sender's
        _with("message.text", ""),  # no words: a service message
        _with("message.forward_origin", {"type": "hidden_user", "date": 1, "sender_user_name": "X"}),
        _with("message.photo", [{"file_id": "a", "file_unique_id": "b", "width": 1, "height": 1}]),
        _with("message.date", 1.5),  # a field of another type
        _with("message.from.is_bot", "no"),
        _with("update_id", -1),
        _with("message.newer_bot_api_field", True),  # something this version does not know
        _with("message.link_preview_options", {"is_disabled": True, "newer": 1}),
        _with("message.link_preview_options", {"url": 5}),
        b'{"update_id": 11, "edited_message": {}}',
        b"not json",
        b'{"update_id": 1, "message": {"text": "\x8f"}}',  # not UTF-8 inside a string: the full path says so
    ],
)
def test_anything_else_takes_the_full_path(body: bytes) -> None:
    assert plain_text("shop", 42, body, NOW) is None


def test_the_shape_the_full_path_reads_the_same() -> None:
    body = _with("message.from", {"id": 7, "is_bot": False, "first_name": "Vera", "last_name": "Ozola", "username": "vo"})
    fast = plain_text("shop", 42, body, NOW)
    assert fast is not None and fast.inbound is not None
    assert (fast.inbound.id, fast.inbound.profile.name, fast.inbound.profile.username) == (
        "telegram:shop:42:10",
        "Vera Ozola",
        "vo",
    )
    assert fast == full(body)


# Updates Telegram really sent (../shared/corpus/telegram) that are a client's plain text in the private chat.
FAST_IN_CORPUS = {"teloxide__update_message_private_text.json"}


@pytest.mark.parametrize("path", params("telegram", ".json"))
def test_every_corpus_update_the_fast_path_takes_gives_what_the_full_path_gives(path: Path) -> None:
    body = path.read_bytes()
    fast = plain_text("shop", 42, body, NOW)
    if fast is None:  # not its shape: the full path reads it, as before
        assert path.name not in FAST_IN_CORPUS
        return
    assert fast == full(body), path.name
    # One more key anywhere in the update and it is no longer the fast path's shape.
    update = json.loads(body)
    update["message"]["newer_bot_api_field"] = 1
    assert plain_text("shop", 42, json.dumps(update).encode(), NOW) is None


def test_the_corpus_has_plain_texts_for_the_fast_path() -> None:
    names = {p.name for p in corpus_files("telegram", ".json")}
    if not names:
        pytest.skip("no corpus")
    assert names >= FAST_IN_CORPUS
    taken = {p.name for p in corpus_files("telegram", ".json") if plain_text("shop", 42, p.read_bytes(), NOW) is not None}
    assert taken == FAST_IN_CORPUS
