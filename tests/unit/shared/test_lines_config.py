from __future__ import annotations

from pathlib import Path

import pytest

from openlines.lines import ConfigError, binding_index, load, parse

ROOT = Path(__file__).resolve().parents[3]

BASE = """
[operators.anna]
name = "Anna"

[[lines]]
id = "support"
name = "Support"
channels = [{ channel = "webchat", account = "demo" }]
[lines.queue]
operators = ["anna"]
"""


def test_example_file_is_valid_and_binds_the_demo_widget() -> None:
    cfg = load(ROOT / "deploy" / "lines.example.toml")
    index = binding_index(cfg.lines)
    assert index[("webchat", "demo")].id == "support"
    assert cfg.lines[0].queue.wait_seconds == 45


def test_defaults_follow_the_recommended_values() -> None:
    cfg = parse(BASE)
    q = cfg.lines[0].queue
    assert (q.mode, q.wait_seconds, q.max_chats_per_operator, q.skip_offline) == ("round_robin", 45, 4, True)


def test_unknown_key_is_an_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse(BASE + "wait_secnds = 30\n")
    assert "wait_secnds" in str(err.value)
    assert "lines[0].queue" in str(err.value)


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        parse(BASE.replace('operators = ["anna"]', 'operators = ["anna"]\nwait_seconds = "soon"'))
    assert "wait_seconds" in str(err.value)


def test_operator_without_permission_is_refused_with_the_reason() -> None:
    text = BASE.replace('name = "Anna"', 'name = "Anna"\npermissions = []')
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert "lacks the 'openlines' permission" in str(err.value)


def test_undeclared_operator_and_unknown_channel_are_both_reported() -> None:
    text = BASE.replace('operators = ["anna"]', 'operators = ["anna", "ghost"]').replace('"webchat"', '"fax"')
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert len(err.value.errors) == 2
    assert any("'ghost' is not declared" in e for e in err.value.errors)
    assert any("unknown channel 'fax'" in e for e in err.value.errors)


def test_one_channel_account_feeds_one_line() -> None:
    text = BASE + '\n[[lines]]\nid = "sales"\nname = "Sales"\nchannels = [{ channel = "webchat", account = "demo" }]\n'
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert "already feeds line 'support'" in str(err.value)


def test_broken_toml_is_reported_with_the_file_name() -> None:
    with pytest.raises(ConfigError) as err:
        parse("[[lines]\n", "my.toml")
    assert "my.toml: not valid TOML" in str(err.value)


def test_hours_are_checked_key_by_key() -> None:
    text = BASE + (
        '[lines.hours]\nenabled = true\ntimezone = "Mars/Olympus"\nholidays = ["2026-02-30", "12-31", "02-29"]\n'
        'days_off = ["sunday"]\noutside = "redirect"\n[lines.hours.weekly]\nmon = ["18:00-09:00"]\nfun = ["09:00-10:00"]\n'
    )
    with pytest.raises(ConfigError) as err:
        parse(text)
    msgs = "\n".join(err.value.errors)
    assert "unknown time zone 'Mars/Olympus'" in msgs
    assert "'2026-02-30' is not a date" in msgs
    assert "'12-31'" not in msgs and "'02-29'" not in msgs
    assert "unknown day 'sunday'" in msgs and "unknown day 'fun'" in msgs
    assert "ends before it starts" in msgs
    assert "redirect_line: required" in msgs


@pytest.mark.parametrize("zone", ["Europe", "America/", "../etc/passwd", "", "UTC/../Europe"])
def test_a_time_zone_that_names_no_zone_file_is_a_validation_error(zone: str) -> None:
    text = BASE + f'[lines.hours]\nenabled = true\ntimezone = "{zone}"\n[lines.hours.weekly]\nmon = ["09:00-18:00"]\n'
    with pytest.raises(ConfigError) as err:
        parse(text)
    assert f"unknown time zone {zone!r}" in "\n".join(err.value.errors)


def test_sla_targets_are_off_by_default_and_out_of_range_ones_name_their_key() -> None:
    sla = parse(BASE).lines[0].sla
    assert (sla.first_response_seconds, sla.next_response_seconds) == (0, 0)
    sla = parse(BASE + "[lines.sla]\nfirst_response_seconds = 120\nnext_response_seconds = 300\n").lines[0].sla
    assert (sla.first_response_seconds, sla.next_response_seconds) == (120, 300)
    with pytest.raises(ConfigError) as err:
        parse(BASE + "[lines.sla]\nfirst_response_seconds = -5\nnext_response_seconds = 99999999\nfirst_reply = 3\n")
    problems = err.value.errors
    assert any("sla.first_response_seconds: -5 is outside 0-604800" in p for p in problems), problems
    assert any("sla.next_response_seconds: 99999999 is outside" in p for p in problems), problems
    assert any("sla.first_reply: unknown key" in p for p in problems), problems


def test_sla_alert_addresses_must_be_plain_addresses() -> None:
    ok = parse(BASE + '[lines.sla]\nnotify_emails = ["lead@example.com", "a.b+sla@mail.example.co"]\n')
    assert ok.lines[0].sla.notify_emails == ["lead@example.com", "a.b+sla@mail.example.co"]
    bad = ["lead@example.com\\r\\nBcc: x@evil.test", "Lead <lead@example.com>", "nobody", "x@localhost"]
    with pytest.raises(ConfigError) as err:
        parse(BASE + "[lines.sla]\nnotify_emails = [" + ", ".join(f'"{a}"' for a in bad) + "]\n")
    problems = [p for p in err.value.errors if "sla.notify_emails" in p]
    assert len(problems) == len(bad), err.value.errors
