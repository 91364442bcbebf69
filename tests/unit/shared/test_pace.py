"""The gateways' one limiter: at most ``burst`` sends in any ``burst / rate`` seconds, exactly."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlines.pace import Pace, backoff


@pytest.mark.parametrize(("rate", "burst"), [(30.0, 30), (20.0, 20), (80.0, 80), (1.0, 3), (1 / 6, 20)])
def test_a_platform_limit_is_never_passed_within_its_window_even_in_the_first_one(rate: float, burst: int) -> None:
    pace = Pace(rate, burst)
    window = burst / rate
    sends = [pace.reserve(0.0) for _ in range(3 * burst + 1)]
    # the whole burst at once, then not one more until the first is a window old ...
    assert sends[:burst] == [0.0] * burst
    assert sends[burst] == pytest.approx(window)
    # ... and at the boundary: exactly ``burst`` in [0, window), the next ``burst`` in [window, 2 window)
    assert sum(1 for t in sends if t < window) == burst
    assert sum(1 for t in sends if window <= t < 2 * window) == burst
    assert sends[-1] == pytest.approx(3 * window)


def test_thirty_a_second_lets_thirty_through_in_the_first_second_not_sixty() -> None:
    pace = Pace(30.0, 30)
    sends = [pace.reserve(t / 1000) for t in range(1000) for _ in range(2)]  # 2000 tries over one second
    assert sum(1 for i, wait in enumerate(sends) if (i // 2) / 1000 + wait < 1.0) == 30


def test_a_hold_delays_every_send_until_then_and_the_budget_is_whole_after_it() -> None:
    pace = Pace(1.0, 3)
    assert pace.reserve(0.0) == 0.0
    pace.hold(10.0)
    assert [pace.reserve(1.0) for _ in range(3)] == [9.0, 9.0, 9.0]
    assert pace.reserve(1.0) == pytest.approx(12.0)  # the third before it was at 10: a window later


def test_idle_only_once_forgetting_it_changes_nothing() -> None:
    pace = Pace(1.0, 3)
    for _ in range(4):
        pace.reserve(0.0)  # the 4th booked at 3.0
    assert not pace.idle(5.9)
    assert pace.idle(6.0)
    pace.hold(8.0)
    assert not pace.idle(7.0)


def test_bad_settings_are_refused() -> None:
    for rate, burst in ((0.0, 1), (-1.0, 1), (1.0, 0)):
        with pytest.raises(ValueError):
            Pace(rate, burst)


@given(
    st.lists(st.floats(0, 0.5), min_size=1, max_size=120),
    st.floats(0.1, 100),
    st.integers(1, 40),
    st.lists(st.floats(0, 5), max_size=3),
)
def test_no_window_ever_holds_more_than_the_burst_and_order_is_kept(
    gaps: list[float], rate: float, burst: int, holds: list[float]
) -> None:
    pace = Pace(rate, burst)
    window = burst / rate
    now, sends = 0.0, []
    for i, gap in enumerate(gaps):
        now += gap
        if holds and i % 17 == 5:
            pace.hold(now + holds[i % len(holds)])
        sends.append(now + pace.reserve(now))
    assert all(a <= b + 1e-9 for a, b in itertools.pairwise(sends))  # in booking order
    for i in range(len(sends) - burst):
        assert sends[i + burst] - sends[i] >= window - 1e-9


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    assert [backoff(n, 1.0, 10.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff(3, 1.0, 10.0, jitter=0.5) == 3.0
    assert backoff(1000, 1.0, 60.0) == 60.0
    with pytest.raises(ValueError):
        backoff(0, 1.0, 10.0)
