from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway_vk.settings import Settings
from openlines.settings import SettingsError, load_settings

GROUP = {"account": "shop", "group_id": 1, "token": "tok-123", "secret": "sec-456-Kq7Zt9Wm3xRv", "confirmation": "abc"}


def test_communities_from_inline_json_and_secrets_stay_out_of_the_log_line() -> None:
    s = load_settings(Settings, {"OPENLINES_VK_GROUPS": json.dumps([GROUP])})
    assert s.communities()["shop"].group_id == 1
    public = s.public()
    assert public["vk_groups"] == {"shop": 1}
    assert "tok-123" not in repr(public) and "tok-123" not in repr(s.communities())


def test_communities_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "vk.toml"
    path.write_text('[[groups]]\naccount = "shop"\ngroup_id = 1\ntoken = "t"\nsecret = "5b0f3d9e7a1c4f6b"\n')
    assert list(load_settings(Settings, {"OPENLINES_VK_GROUPS": str(path)}).communities()) == ["shop"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("/nonexistent/vk.json", "cannot read"),
        (json.dumps([GROUP | {"secret": ""}]), "secret must be set"),
        (json.dumps([GROUP | {"account": "a.b"}]), "account"),
        (json.dumps([GROUP, GROUP | {"group_id": 2}]), "listed twice"),
        (json.dumps([GROUP | {"tokn": "x"}]), "tokn"),
    ],
)
def test_a_bad_community_list_names_the_variable(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match="OPENLINES_VK_GROUPS") as err:
        load_settings(Settings, {"OPENLINES_VK_GROUPS": value})
    assert message in str(err.value)
