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


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_request_timeout_that_is_not_above_zero_is_refused_at_start_up(value: str) -> None:
    import subprocess
    import sys

    s = load_settings(Demo, {"OPENLINES_WEBCHAT_SECRET": "x" * 32, "OPENLINES_NATS_REQUEST_TIMEOUT": value})
    assert s.problem() == f"OPENLINES_NATS_REQUEST_TIMEOUT={float(value)}: must be a number of seconds above 0"
    assert load_settings(Demo, {"OPENLINES_WEBCHAT_SECRET": "x" * 32}).problem() is None
    # A real service refuses to start with it, before it ever connects.
    env = {"PATH": "/usr/bin:/bin", "OPENLINES_NATS_REQUEST_TIMEOUT": value, "OPENLINES_NATS_URL": "nats://127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "router"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "configuration error: OPENLINES_NATS_REQUEST_TIMEOUT" in done.stderr, done.stderr[-500:]
