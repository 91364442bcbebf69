"""The flood guard's pure counting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from router.core.flood import FloodRule, count

RULE = FloodRule(limit=3, window=60.0, channels=frozenset({"telegram", "vk"}))


def test_within_the_limit_nothing_is_held_and_the_first_beyond_flags() -> None:
    c = count(RULE, 0.0, 0, now=100.0)
    seen = []
    for i in range(5):
        seen.append((c.count, c.held(RULE), c.first_held(RULE)))
        c = count(RULE, c.window_start, c.count, now=100.0 + i)
    assert seen == [(1, False, False), (2, False, False), (3, False, False), (4, True, True), (5, True, False)]


def test_a_new_window_lets_messages_through_again() -> None:
    c = count(RULE, 100.0, 10, now=160.0)
    assert (c.window_start, c.count, c.held(RULE)) == (160.0, 1, False)
    assert count(RULE, 100.0, 10, now=159.9).held(RULE)


def test_a_clock_going_back_starts_a_new_window() -> None:
    assert count(RULE, 500.0, 9, now=400.0).count == 1


def test_the_guard_covers_only_its_channels_and_zero_turns_it_off() -> None:
    assert RULE.guards("telegram") and RULE.guards("vk") and not RULE.guards("webchat")
    off = FloodRule(limit=0, window=60.0, channels=frozenset({"telegram"}))
    assert not off.guards("telegram")
    assert not count(off, 0.0, 1000, now=1.0).held(off)


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=100))
def test_never_more_than_the_limit_let_through_in_one_window(gaps: list[float]) -> None:
    now, start, counted = 0.0, 0.0, 0
    through: dict[float, int] = {}
    for gap in gaps:
        now += gap / 100
        c = count(RULE, start, counted, now)
        start, counted = c.window_start, c.count
        if not c.held(RULE):
            through[start] = through.get(start, 0) + 1
    assert all(n <= RULE.limit for n in through.values())


def test_the_router_settings_configure_the_guard_with_sane_defaults() -> None:
    import pytest

    from openlines.settings import SettingsError, load_settings
    from router.settings import Settings

    rule = load_settings(Settings, {}).flood_rule()
    assert (rule.limit, rule.window, rule.channels) == (30, 60.0, frozenset({"telegram", "vk", "whatsapp"}))
    env = {"OPENLINES_FLOOD_LIMIT": "10", "OPENLINES_FLOOD_WINDOW": "30", "OPENLINES_FLOOD_CHANNELS": "telegram, email"}
    rule = load_settings(Settings, env).flood_rule()
    assert (rule.limit, rule.window, rule.channels) == (10, 30.0, frozenset({"telegram", "email"}))
    with pytest.raises((SettingsError, ValueError), match="OPENLINES_FLOOD_LIMIT must be >= 0"):
        load_settings(Settings, {"OPENLINES_FLOOD_LIMIT": "-1"})
