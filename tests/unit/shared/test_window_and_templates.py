"""The customer-service window and message templates: pure rules the router and the desk share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlines import templates, window
from openlines.lines import ConfigError, MessageTemplate, parse

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def test_whatsapp_has_a_24_hour_window_from_the_clients_last_message_and_other_channels_none() -> None:
    last = NOW - timedelta(hours=23, minutes=59)
    assert window.is_open("whatsapp", last, NOW)
    assert window.closes_at("whatsapp", last) == last + timedelta(hours=24)
    assert not window.is_open("whatsapp", NOW - timedelta(hours=24), NOW)
    assert not window.is_open("whatsapp", None, NOW), "a client who never wrote has no open window"
    for channel in ("telegram", "vk", "email", "webchat"):
        assert window.is_open(channel, None, NOW) and window.closes_at(channel, None) is None


@given(st.integers(min_value=0, max_value=10 * 24 * 3600))
def test_the_window_is_open_exactly_while_less_than_24_hours_passed(seconds: int) -> None:
    assert window.is_open("whatsapp", NOW - timedelta(seconds=seconds), NOW) == (seconds < 24 * 3600)


def tpl(text: str, **more: object) -> MessageTemplate:
    return MessageTemplate(name="follow_up", text=text, **more)  # type: ignore[arg-type]


def test_numbered_variables_are_filled_in_order_and_the_body_reads_as_the_client_sees_it() -> None:
    body, sent = templates.fill(tpl("Order {{2}} for {{1}} is ready. {{1}}, reply to talk to us."), ["Ann", "A-17"])
    assert body == "Order A-17 for Ann is ready. Ann, reply to talk to us."
    assert (sent.name, sent.language, sent.params, sent.param_names) == ("follow_up", "en_US", ["Ann", "A-17"], [])


def test_named_variables_keep_their_names_for_the_send() -> None:
    body, sent = templates.fill(tpl("Hi {{customer}}, order {{order_id}} shipped", language="de"), ["Ann", "42"])
    assert body == "Hi Ann, order 42 shipped"
    assert sent.param_names == ["customer", "order_id"] and sent.language == "de"


@pytest.mark.parametrize(
    ("params", "why"),
    [
        (["Ann"], "has 2 variables; 1 values"),
        (["Ann", "  "], "'order' is empty"),
        (["Ann", "two\nlines"], "line break"),
        (["Ann", "a     b"], "more than four spaces"),
        (["Ann", "x" * 1001], "at most 1000"),
    ],
)
def test_values_whatsapp_would_refuse_are_refused_with_the_variable_named(params: list[str], why: str) -> None:
    with pytest.raises(templates.TemplateError, match=why):
        templates.fill(tpl("Hi {{1}}, order {{2}}", variables=["name", "order"]), params)


def test_declared_templates_are_checked_when_the_lines_are_read() -> None:
    head = '[[lines]]\nid = "wa"\nname = "WA"\n[[lines.channels]]\nchannel = "whatsapp"\naccount = "shop"\n'

    def errors(body: str, channel_head: str = head) -> list[str]:
        with pytest.raises(ConfigError) as exc:
            parse(channel_head + body)
        return exc.value.errors

    good = '[[lines.channels.templates]]\nname = "follow_up"\ntext = "Hi {{1}}"\nvariables = ["name"]\n'
    assert parse(head + good).lines[0].channels[0].templates[0].variables == ["name"]
    assert any("mixes numbered" in e for e in errors('[[lines.channels.templates]]\nname = "a"\ntext = "{{1}} {{x}}"\n'))
    assert any("{{1}} to {{n}}" in e for e in errors('[[lines.channels.templates]]\nname = "a"\ntext = "{{2}}"\n'))
    assert any("language 'english'" in e for e in errors(good + 'language = "english"\n'))
    two_labels = '[[lines.channels.templates]]\nname = "a"\ntext = "{{1}}"\nvariables = ["a", "b"]\n'
    assert any("2 labels" in e for e in errors(two_labels))
    assert any("listed twice" in e for e in errors(good + good.replace('variables = ["name"]\n', 'variables = ["n"]\n')))
    telegram = head.replace('"whatsapp"', '"telegram"')
    assert any("for whatsapp accounts only" in e for e in errors(good, telegram))


def test_a_reply_without_a_template_encodes_as_before_an_upgrade() -> None:
    """A router not yet upgraded refuses unknown fields: a plain reply must not carry "template": null."""
    import msgspec

    from openlines.commands import Reply, TemplateChoice

    plain = msgspec.json.decode(msgspec.json.encode(Reply(operator_id="a", session_id="s", text="hi", client_msg_id="c")))
    assert plain == {"operator_id": "a", "session_id": "s", "text": "hi", "client_msg_id": "c"}
    with_template = Reply(operator_id="a", session_id="s", text="", client_msg_id="c", template=TemplateChoice(name="t"))
    assert msgspec.json.decode(msgspec.json.encode(with_template))["template"] == {"name": "t", "language": "", "params": []}
