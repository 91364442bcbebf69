"""The plain-text fast path of the VK Callback API edge gives exactly the event and message the full path
gives (parse_callback + parse_message_new), and takes nothing it was not made for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.corpus import corpus_files, params

from gateway_vk.normalise import CallbackError, parse_callback, parse_message_new, plain_message

ints = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 1, -1, 2**63, -(2**63) - 1]))
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2))


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """message_new events around the fast path's shape: most fit, some differ in one field the full path reads."""
    message: dict[str, Any] = {
        "id": draw(ints),
        "date": draw(ints),
        "peer_id": draw(ints),
        "from_id": draw(ints),
        "text": draw(st.text(max_size=30)),
    }
    optional = {
        "conversation_message_id": st.one_of(st.none(), ints),
        "attachments": st.one_of(st.none(), st.just([]), st.just([{"type": "sticker", "sticker": {"sticker_id": 1}}])),
        "fwd_messages": st.one_of(st.none(), st.just([]), st.just([{"text": "quoted"}]), st.just("x")),
        "geo": st.one_of(st.none(), st.just({"coordinates": {"latitude": 1.5, "longitude": 2.5}})),
        "action": st.just({"type": "chat_invite_user"}),
        "out": st.just(0),
        "important": st.booleans(),
        "is_hidden": st.booleans(),
        "version": ints,
        "reply_message": st.just({"text": "earlier"}),
    }
    for key, values in optional.items():
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            message[key] = draw(values)
    body: dict[str, Any] = {"type": "message_new", "group_id": draw(ints), "object": {"message": message}}
    if draw(st.booleans()):
        body["object"]["client_info"] = {"button_actions": ["text"], "keyboard": True, "lang_id": 0}
    for key, values in (
        ("event_id", st.one_of(st.text(max_size=12), anything)),
        ("secret", st.one_of(st.text(max_size=8), anything)),
        ("v", st.just("5.199")),
    ):
        if draw(st.booleans()):
            body[key] = draw(values)
    return body


def assert_same_as_full(body: bytes) -> bool:
    """Whether the fast path took ``body``; when it did, what it gives equals the full path's."""
    fast = plain_message(body)
    if fast is None:
        return False
    event, message = fast
    full_event = parse_callback(body)
    assert (event.type, event.group_id, event.event_id, event.secret) == (
        full_event.type,
        full_event.group_id,
        full_event.event_id,
        full_event.secret,
    )
    assert message == parse_message_new(full_event.object)
    return True


@settings(max_examples=500, deadline=None)
@given(events())
def test_what_the_fast_path_takes_it_reads_as_the_full_path_does(body: dict[str, Any]) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if not assert_same_as_full(raw):
        return
    msg = body["object"]["message"]
    assert not msg.get("attachments") and "action" not in msg and msg.get("geo") is None


def _base() -> dict[str, Any]:
    message = {"id": 5, "date": 1700000000, "peer_id": 7, "from_id": 7, "text": "hello", "attachments": [], "fwd_messages": []}
    return {
        "type": "message_new",
        "event_id": "abc123",
        "v": "5.199",
        "group_id": 42,
        "secret": "s",
        "object": {"message": message},
    }


def _with(path: str, value: Any) -> bytes:
    body = _base()
    *parents, last = path.split(".")
    node = body
    for p in parents:
        node = node[p]
    node[last] = value
    return json.dumps(body).encode()


def test_the_common_event_takes_the_fast_path_and_reads_the_same() -> None:
    assert assert_same_as_full(json.dumps(_base()).encode())


@pytest.mark.parametrize(
    "body",
    [
        _with("object.message.attachments", [{"type": "photo", "photo": {"id": 1, "owner_id": 2}}]),
        _with("object.message.fwd_messages", [{"text": "quoted"}]),
        _with("object.message.geo", {"coordinates": {"latitude": 1, "longitude": 2}}),
        _with("object.message.action", {"type": "chat_invite_user"}),
        _with("object.message.text", "   "),  # nothing to hand to an operator
        _with("object.message.from_id", 0),
        _with("object.message.id", True),
        _with("object.message.date", 1.5),
        _with("object.message.peer_id", 2**63),
        _with("group_id", "42"),
        _with("type", "message_reply"),
        _with("secret", 5),
        _with("object", {"peer_id": 7, "from_id": 7, "text": "legacy, flat"}),
        b"not json",
        b'{"type": "\x8f"}',  # not UTF-8 inside a string: the full path says so
    ],
)
def test_anything_else_takes_the_full_path(body: bytes) -> None:
    assert plain_message(body) is None


def test_an_odd_event_id_is_read_as_the_full_path_reads_it() -> None:
    for event_id in ("has space", "", "x" * 200, 5):
        assert assert_same_as_full(_with("event_id", event_id))


# Events VK really sent (../shared/corpus/vk) that are a client's plain text.
FAST_IN_CORPUS = {"vkbottle__message_new_with_client_info.json"}


def as_delivered(path: Path) -> bytes:
    """A corpus event as VK delivers it to a community: with its group_id and secret (as the corpus integration test)."""
    return json.dumps({**json.loads(path.read_bytes()), "group_id": 42, "secret": "s"}).encode()


@pytest.mark.parametrize("path", params("vk", ".json"))
def test_every_corpus_event_the_fast_path_takes_gives_what_the_full_path_gives(path: Path) -> None:
    check_corpus_body(path.read_bytes(), None)  # as collected
    check_corpus_body(as_delivered(path), path.name in FAST_IN_CORPUS)


def check_corpus_body(body: bytes, fast: bool | None) -> None:
    """Whatever the fast path takes of ``body`` reads as in the full path; ``fast``: whether it must take it."""
    try:
        took = assert_same_as_full(body)
    except CallbackError:  # the full path refuses it: then the fast path must not have taken it
        assert plain_message(body) is None
        return
    if fast is not None:
        assert took == fast


def test_the_corpus_has_plain_texts_for_the_fast_path() -> None:
    names = {p.name for p in corpus_files("vk", ".json")}
    if not names:
        pytest.skip("no corpus")
    assert names >= FAST_IN_CORPUS
