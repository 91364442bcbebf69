"""OPENLINES_WHATSAPP_ACCOUNTS: apps and numbers, each mistake named without echoing a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway_whatsapp.accounts import AccountsError, parse_accounts

SECRET = "5f3c9a1d7e2b4c6a8f0e1d3c5b7a9e2f"
VERIFY = "verify-Kq7Zt9Wm3xRv-0123456789"
TOKEN = "EAAGshoptoken0123456789abcdefXYZ"


def doc(apps: Any = None, numbers: Any = None) -> str:
    return json.dumps(
        {
            "apps": apps if apps is not None else [{"id": "main", "app_secret": SECRET, "verify_token": VERIFY}],
            "numbers": numbers if numbers is not None else [{"account": "shop", "phone_number_id": "1065", "token": TOKEN}],
        }
    )


def test_one_app_and_its_numbers_from_inline_json_or_a_toml_file(tmp_path: Path) -> None:
    acc = parse_accounts(doc())
    assert acc.numbers["shop"].app == "main" and acc.by_phone_id["1065"].account == "shop"
    f = tmp_path / "wa.toml"
    f.write_text(
        f'[[apps]]\nid = "a"\napp_secret = "{SECRET}"\nverify_token = "{VERIFY}"\n'
        f'[[apps]]\nid = "b"\napp_secret = "{SECRET[::-1]}"\nverify_token = "{VERIFY}x"\n'
        f'[[numbers]]\naccount = "one"\nphone_number_id = 11\ntoken = "{TOKEN}"\napp = "b"\n'
    )
    acc = parse_accounts(str(f))
    assert set(acc.apps) == {"a", "b"} and acc.numbers["one"].app == "b" and acc.numbers["one"].phone_number_id == "11"
    assert "EAAG" not in repr(acc) and SECRET not in repr(acc)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        (json.dumps([]), "must be an object"),
        (doc(apps=[]), "apps must list at least one"),
        (doc(numbers=[]), "numbers must list at least one"),
        (doc(apps=[{"id": "main", "app_secret": "short", "verify_token": VERIFY}]), "apps[0] (id main).app_secret: not a usable"),
        (doc(apps=[{"id": "main", "app_secret": SECRET, "verify_token": "change-me-please-now"}]), "verify_token: not a usable"),
        (doc(apps=[{"id": "a b", "app_secret": SECRET, "verify_token": VERIFY}]), "apps[0].id"),
        (doc(numbers=[{"account": "shop", "phone_number_id": "+1 650", "token": TOKEN}]), "phone_number_id: the number's id"),
        (doc(numbers=[{"account": "shop", "phone_number_id": "1", "token": "short"}]), "token: not an access token"),
        (doc(numbers=[{"account": "shop", "phone_number_id": "1", "token": TOKEN, "app": "x"}]), "no app 'x'"),
        (doc(numbers=[{"account": "shop", "phone_number_id": "1", "token": TOKEN, "colour": 1}]), "unknown field(s) colour"),
        (
            doc(
                numbers=[
                    {"account": "a", "phone_number_id": "1", "token": TOKEN},
                    {"account": "b", "phone_number_id": "1", "token": TOKEN},
                ]
            ),
            "listed under two accounts",
        ),
    ],
)
def test_every_mistake_is_named_and_no_secret_is_echoed(value: str, message: str) -> None:
    with pytest.raises(AccountsError) as exc:
        parse_accounts(value)
    assert message in str(exc.value)
    assert TOKEN not in str(exc.value) and SECRET not in str(exc.value)


def test_several_apps_need_each_number_to_name_its_app() -> None:
    apps = [
        {"id": "a", "app_secret": SECRET, "verify_token": VERIFY},
        {"id": "b", "app_secret": SECRET[::-1], "verify_token": VERIFY + "b"},
    ]
    with pytest.raises(AccountsError, match="app: required when there are several apps"):
        parse_accounts(doc(apps=apps))
