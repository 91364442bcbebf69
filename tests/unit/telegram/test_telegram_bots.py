"""OPENLINES_TELEGRAM_BOTS: inline JSON or a file; clear errors that never show a token or secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway_telegram.bots import BotsError, parse_bots
from gateway_telegram.settings import Settings
from openlines.settings import load_settings

TOKEN = "123456:AAHfiqksKZ8WmR2zSjiQ7_v4TMAKdiHm9T0"
SECRET = "a-very-secret-string-123"


def test_inline_json_and_toml_file_give_the_same_bots(tmp_path: Path) -> None:
    inline = parse_bots(json.dumps([{"account": "sales", "token": TOKEN, "secret": SECRET}]))
    path = tmp_path / "bots.toml"
    path.write_text(f'[[bots]]\naccount = "sales"\ntoken = "{TOKEN}"\nsecret = "{SECRET}"\n')
    assert parse_bots(str(path)) == inline
    assert inline[0].bot_id == 123456
    json_file = tmp_path / "bots.json"
    json_file.write_text(json.dumps({"bots": [{"account": "sales", "token": TOKEN, "secret": SECRET}]}))
    assert parse_bots(str(json_file)) == inline


@pytest.mark.parametrize(
    ("bots", "message"),
    [
        ([], "at least one bot"),
        ([{"account": "a.b", "token": TOKEN, "secret": SECRET}], "bots[0].account"),
        ([{"account": "a", "token": "nope", "secret": SECRET}], "bots[0] (account a).token"),
        ([{"account": "a", "token": TOKEN, "secret": "short"}], ".secret: must be 16-256"),
        ([{"account": "a", "token": TOKEN, "secret": SECRET, "extra": 1}], "unknown field(s) extra"),
        (
            [{"account": "a", "token": TOKEN, "secret": SECRET}, {"account": "a", "token": "9:" + "x" * 30, "secret": SECRET}],
            "account listed twice",
        ),
        (
            [{"account": "a", "token": TOKEN, "secret": SECRET}, {"account": "b", "token": TOKEN, "secret": SECRET}],
            "same bot",
        ),
    ],
)
def test_bad_bot_lists_are_refused_naming_the_entry_and_never_the_secrets(bots: list[object], message: str) -> None:
    with pytest.raises(BotsError) as err:
        parse_bots(json.dumps(bots))
    assert message in str(err.value)
    assert TOKEN not in str(err.value) and SECRET not in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BotsError, match="cannot read"):
        parse_bots(str(tmp_path / "nope.toml"))


def test_the_start_up_log_line_hides_inline_bots_and_repr_hides_tokens() -> None:
    value = json.dumps([{"account": "sales", "token": TOKEN, "secret": SECRET}])
    settings = load_settings(Settings, {"OPENLINES_TELEGRAM_BOTS": value})
    assert TOKEN not in str(settings.public()) and SECRET not in str(settings.public())
    assert TOKEN not in repr(parse_bots(value))
