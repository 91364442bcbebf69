from __future__ import annotations

import pytest

from openlines.settings import BaseSettings, SettingsError, load_settings


class Demo(BaseSettings, kw_only=True):
    webchat_secret: str
    max_frame: int = 16


def test_env_vars_are_parsed_with_types() -> None:
    s = load_settings(Demo, {"OPENLINES_WEBCHAT_SECRET": "x" * 32, "OPENLINES_MAX_FRAME": "99", "OPENLINES_HTTP_PORT": "9000"})
    assert (s.max_frame, s.http_port) == (99, 9000)


def test_bad_value_error_names_the_variable_and_hides_secrets() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(Demo, {"OPENLINES_WEBCHAT_SECRET": "s3cr3t", "OPENLINES_MAX_FRAME": "lots"})
    assert "OPENLINES_MAX_FRAME='lots'" in str(err.value)


def test_missing_required_variable_is_named() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(Demo, {})
    assert "OPENLINES_WEBCHAT_SECRET must be set" in str(err.value)


def test_public_view_masks_secrets() -> None:
    s = load_settings(Demo, {"OPENLINES_WEBCHAT_SECRET": "s3cr3t"})
    assert s.public()["webchat_secret"] == "***"
