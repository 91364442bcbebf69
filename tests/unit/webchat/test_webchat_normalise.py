from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway_webchat.normalise import ClientMessage, FrameError, browser_of, inbound_id, language_of, parse_frame, to_inbound


def parse(obj: object, *, max_text: int = 50, max_frame: int = 512) -> ClientMessage:
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return parse_frame(data, max_text=max_text, max_frame=max_frame)


def test_a_valid_message_is_parsed_and_the_name_is_tidied() -> None:
    msg = parse({"type": "message", "id": "a-1_B", "text": " hi \n there ", "name": "  Ann \t Lee  ", "extra": 1})
    assert msg == ClientMessage(id="a-1_B", text=" hi \n there ", name="Ann Lee")
    assert parse({"type": "message", "id": "x", "text": "t", "name": None}).name == ""


@pytest.mark.parametrize(
    ("obj", "code", "client_id"),
    [
        ("{not json", "bad_frame", None),
        ("[]", "bad_frame", None),
        ({"id": "a", "text": "t"}, "bad_frame", "a"),
        ({"type": "message", "text": "t"}, "bad_frame", None),
        ({"type": "message", "id": "", "text": "t"}, "bad_frame", None),
        ({"type": "message", "id": "a.b", "text": "t"}, "bad_frame", None),
        ({"type": "message", "id": 7, "text": "t"}, "bad_frame", None),
        ({"type": "message", "id": "a", "text": ""}, "bad_frame", "a"),
        ({"type": "message", "id": "a", "text": " \n "}, "bad_frame", "a"),
        ({"type": "message", "id": "a", "text": ["t"]}, "bad_frame", "a"),
        ({"type": "message", "id": "a", "text": "t", "name": 3}, "bad_frame", "a"),
        ('{"type":"message","id":"a","text":"\\ud800"}', "bad_frame", None),  # lone surrogate
        ('{"type":"message","id":"a","text":"t","name":"\\udc00x"}', "bad_frame", None),  # in any field
        ('{"type":"message","id":"a","text":"t","email":"a\\ud800@b.example"}', "bad_frame", None),
        ({"type": "message", "id": "a", "text": "x" * 51}, "too_large", "a"),
        ({"type": "message", "id": "a", "text": "x" * 49, "pad": "y" * 600}, "too_large", "a"),
        ("z" * 600, "too_large", None),
    ],
)
def test_bad_frames_are_refused_with_a_code_and_the_id_when_known(obj: object, code: str, client_id: str | None) -> None:
    with pytest.raises(FrameError) as err:
        parse(obj)
    assert (err.value.code, err.value.client_id) == (code, client_id)
    assert err.value.detail


def test_a_frame_without_the_pre_chat_form_or_escapes_is_read_as_one_with_them() -> None:
    """Most frames carry neither the form's fields nor a JSON escape; they are read the same as those that do."""
    plain = parse({"type": "message", "id": "a", "text": "Hello  there", "name": " Ann  Lee "})
    escaped = parse('{"type":"message","id":"a","text":"Hello \\u0020there","name":" Ann  Lee ","email":"","phone":null}')
    assert plain == escaped
    assert (plain.text, plain.name, plain.email, plain.phone, plain.consent) == ("Hello  there", "Ann Lee", "", "", "")


def test_max_text_counts_characters_and_max_frame_counts_bytes() -> None:
    assert parse({"type": "message", "id": "a", "text": "ё" * 50}, max_frame=512).text == "ё" * 50
    with pytest.raises(FrameError) as err:
        parse({"type": "message", "id": "a", "text": "ё" * 50}, max_frame=100)
    assert err.value.code == "too_large"


def test_inbound_envelope_is_deterministic_from_account_visitor_and_client_id() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    env = to_inbound("demo", "V" * 22, ClientMessage(id="c1", text="hello", name="Ann"), now)
    assert env.id == inbound_id("demo", "V" * 22, "c1") == f"webchat:demo:{'V' * 22}:c1"
    assert (env.channel, env.account, env.chat_id, env.user_id) == ("webchat", "demo", "V" * 22, "V" * 22)
    assert (env.text, env.channel_msg_id, env.profile.name, env.received_at) == ("hello", "c1", "Ann", now)


def test_the_pre_chat_contact_is_normalised_and_reaches_the_profile() -> None:
    frame = {
        "type": "message",
        "id": "m1",
        "text": "Hello",
        "name": "Ann",
        "email": "  Ann.Client@Example.COM ",
        "phone": "+44 20 7946 0018",
        "consent": "I agree that my data is used to answer me (https://shop.example/privacy)",
    }
    msg = parse_frame(json.dumps(frame), max_text=100, max_frame=4096)
    assert (msg.email, msg.phone) == ("Ann.Client@example.com", "+442079460018")
    env = to_inbound("demo", "v1", msg, datetime(2025, 1, 1, tzinfo=UTC))
    assert (env.profile.name, env.profile.email, env.profile.phone) == ("Ann", "Ann.Client@example.com", "+442079460018")
    assert env.profile.consent.startswith("I agree that my data")
    # a message without the form's fields leaves the profile's contact empty (the router keeps what it knew)
    plain = to_inbound(
        "demo", "v1", parse_frame('{"type":"message","id":"m2","text":"Hi"}', max_text=100, max_frame=4096), env.received_at
    )
    assert (plain.profile.email, plain.profile.phone, plain.profile.consent) == ("", "", "")


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("email", "not-an-address", "not an e-mail address"),
        ("email", "ann@", "not an e-mail address"),
        ("email", 42, "must be a string"),
        ("phone", "020 7946 0018", "country code"),
        ("phone", "+1 2", "country code"),
        ("phone", "call me", "country code"),
        ("consent", ["yes"], "must be a string"),
        ("consent", "x" * 501, "longer than 500"),
    ],
)
def test_a_bad_pre_chat_field_refuses_the_message_and_says_which(field: str, value: object, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        parse_frame(json.dumps({"type": "message", "id": "m1", "text": "Hello", field: value}), max_text=100, max_frame=4096)
    assert err.value.client_id == "m1" and f'"{field}"' in err.value.detail and reason in err.value.detail


@pytest.mark.parametrize(
    ("page", "kept"),
    [
        ("https://shop.example/shoes/red?utm_source=ads&token=s3cret#size", "https://shop.example/shoes/red"),
        ("http://user:pass@shop.example:8080/a", "http://shop.example:8080/a"),
        ("javascript:alert(1)", ""),
        ("data:text/html,hi", ""),
        ("/relative/path", ""),
        ("https://", ""),
        (42, ""),
        ("https://shop.example/" + "a" * 5000, ""),
    ],
)
def test_the_page_keeps_only_scheme_host_and_path_and_a_bad_one_is_dropped_not_refused(page: object, kept: str) -> None:
    msg = parse_frame(
        json.dumps({"type": "message", "id": "m1", "text": "Hi", "page": page, "referrer": page}), max_text=10, max_frame=65536
    )
    assert (msg.page_url, msg.referrer) == (kept, kept)


WIN_CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"


@pytest.mark.parametrize(
    ("ua", "browser"),
    [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome 131 on Windows",
        ),
        (
            WIN_CHROME + " Edg/131.0.0.0",
            "Edge 131 on Windows",
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.5 Mobile/15E148 Safari/604.1",
            "Safari 17 on iOS",
        ),
        ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:133.0) Gecko/20100101 Firefox/133.0", "Firefox 133 on macOS"),
        (
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
            "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36",
            "Samsung Internet 25 on Android",
        ),
        ("curl/8.5.0", ""),
        ("", ""),
    ],
)
def test_the_browser_is_told_in_short(ua: str, browser: str) -> None:
    assert browser_of(ua) == browser


def test_the_language_is_the_first_of_accept_language_when_it_is_one() -> None:
    assert language_of("de-DE,de;q=0.9,en;q=0.8") == "de-DE"
    assert language_of("ru") == "ru"
    assert language_of("*") == "" and language_of("<script>") == "" and language_of("") == ""
