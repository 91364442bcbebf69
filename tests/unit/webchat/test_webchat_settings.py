from __future__ import annotations

import pytest

from gateway_webchat.settings import Settings
from openlines.settings import SettingsError, load_settings


def test_defaults_and_env_parsing() -> None:
    s = load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": "s" * 16, "OPENLINES_ACCOUNTS": "demo, shop,"})
    assert (s.http_port, s.max_text, s.max_frame) == (8081, 4000, 16384)
    assert s.allowed_accounts() == {"demo", "shop"}
    assert s.public()["webchat_secret"] == "***"


def test_a_short_secret_refuses_to_start_with_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="OPENLINES_WEBCHAT_SECRET must be at least 16 characters"):
        load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": "short"})


def test_a_missing_secret_is_named() -> None:
    with pytest.raises(SettingsError, match="OPENLINES_WEBCHAT_SECRET must be set"):
        load_settings(Settings, {})
