from __future__ import annotations

import pytest

from gateway_webchat.settings import Settings
from openlines.settings import SettingsError, load_settings

GOOD = "5b0f3d9e7a1c4f6b8d2e0a9c7b5d3f1e"  # a secret as `openssl rand -hex 16` makes one


def test_defaults_and_env_parsing() -> None:
    s = load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": GOOD, "OPENLINES_ACCOUNTS": "demo, shop,"})
    assert (s.http_port, s.max_text, s.max_frame) == (8081, 4000, 16384)
    assert s.allowed_accounts() == {"demo", "shop"}
    assert s.public()["webchat_secret"] == "***"


def test_a_short_secret_refuses_to_start_with_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="OPENLINES_WEBCHAT_SECRET is not a usable secret: it is 5 characters"):
        load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": "short"})
    for placeholder in ("change-me-to-32-random-characters", "s" * 40):
        with pytest.raises(SettingsError, match=r"OPENLINES_WEBCHAT_SECRET is not a usable secret.*openssl rand -hex 32"):
            load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": placeholder})


def test_a_missing_secret_is_named() -> None:
    with pytest.raises(SettingsError, match="OPENLINES_WEBCHAT_SECRET must be set"):
        load_settings(Settings, {})


def test_admission_limits_come_from_the_environment() -> None:
    env = {"OPENLINES_WEBCHAT_SECRET": GOOD, "OPENLINES_MAX_IN_FLIGHT": "8", "OPENLINES_MAX_SOCKETS": "100"}
    s = load_settings(Settings, {**env, "OPENLINES_MAX_WAITING": "0", "OPENLINES_RETRY_AFTER": "5"})
    limits = s.limits()
    assert (limits.max_in_flight, limits.max_waiting, limits.retry_after, s.max_sockets) == (8, 0, 5, 100)


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("OPENLINES_MAX_IN_FLIGHT", "0", "OPENLINES_MAX_IN_FLIGHT"),
        ("OPENLINES_RETRY_AFTER", "0", "OPENLINES_RETRY_AFTER"),
        ("OPENLINES_MAX_SOCKETS", "0", "OPENLINES_MAX_SOCKETS"),
    ],
)
def test_nonsense_admission_limits_refuse_to_start(var: str, value: str, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": GOOD, var: value})


def test_abuse_limits_have_sane_defaults_and_come_from_the_environment() -> None:
    s = load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": GOOD})
    assert (s.message_rate().per_minute, s.message_rate().burst) == (20.0, 5)
    assert (s.new_visitor_rate().per_minute, s.new_visitor_rate().burst) == (10.0, 10)
    assert (s.visitor_ttl, s.proxies()) == (24 * 3600, ())
    env = {
        "OPENLINES_WEBCHAT_SECRET": GOOD,
        "OPENLINES_VISITOR_MESSAGES_PER_MINUTE": "6",
        "OPENLINES_NEW_VISITORS_PER_MINUTE": "0",
        "OPENLINES_TRUSTED_PROXIES": "10.0.0.0/8,::1",
        "OPENLINES_VISITOR_TTL": "3600",
    }
    s = load_settings(Settings, env)
    assert s.message_rate().per_minute == 6 and s.new_visitor_rate().unlimited
    assert [str(n) for n in s.proxies()] == ["10.0.0.0/8", "::1/128"] and s.visitor_ttl == 3600


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OPENLINES_TRUSTED_PROXIES", "10.0.0.0/8,proxy.local", "OPENLINES_TRUSTED_PROXIES: 'proxy.local' is not an IP address"),
        ("OPENLINES_VISITOR_MESSAGE_BURST", "0", "OPENLINES_VISITOR_MESSAGE_BURST must be >= 1"),
        ("OPENLINES_VISITOR_TTL", "5", "OPENLINES_VISITOR_TTL must be >= 60"),
    ],
)
def test_bad_abuse_limit_settings_are_named(variable: str, value: str, message: str) -> None:
    with pytest.raises((SettingsError, ValueError), match=message):
        load_settings(Settings, {"OPENLINES_WEBCHAT_SECRET": GOOD, variable: value})
