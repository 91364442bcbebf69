"""Pure parts of the Telegram gateway: splitting long text, pacing, backoff."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_telegram.core.ratelimit import Pace, backoff
from gateway_telegram.core.split import split_text, utf16_len

_WS = re.compile(r"\s")


@given(
    st.text(alphabet=st.sampled_from(["a", "б", " ", "\n", "\t", "😀", "x", "\u0301"]), max_size=300) | st.text(max_size=200),
    st.integers(2, 40),
)
def test_split_parts_fit_the_limit_and_keep_every_visible_character_in_order(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(p.strip() and utf16_len(p) <= limit for p in parts)
    assert _WS.sub("", "".join(parts)) == _WS.sub("", text)


def test_short_text_is_one_part_and_blank_text_none() -> None:
    assert split_text("hello") == ["hello"]
    assert split_text("  \n\t ") == []


def test_long_text_is_cut_at_the_last_line_break_then_at_a_space() -> None:
    assert split_text("aaaa bbbb\ncccc dddd", 12) == ["aaaa bbbb", "cccc dddd"]
    assert split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]  # no boundary: hard cut


def test_emoji_count_two_utf16_units_like_telegram_counts_them() -> None:
    parts = split_text("😀" * 5, 4)
    assert parts == ["😀😀", "😀😀", "😀"]


def test_4096_is_the_default_limit() -> None:
    assert [len(p) for p in split_text("x" * 5000)] == [4096, 904]


def test_pace_allows_a_burst_then_one_send_per_interval() -> None:
    pace = Pace(rate=1.0, burst=3)
    assert [pace.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert not pace.idle(4.0)
    assert pace.idle(5.0)


def test_pace_after_retry_after_waits_until_then() -> None:
    pace = Pace(rate=1.0, burst=1)
    assert pace.reserve(0.0) == 0.0
    pace.hold(until=10.0)
    assert pace.reserve(1.0) == pytest.approx(9.0)


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=50), st.floats(0.5, 50), st.integers(1, 5))
def test_pace_never_exceeds_its_rate_over_any_window(gaps: list[float], rate: float, burst: int) -> None:
    pace = Pace(rate, burst)
    now, sends = 0.0, []
    for gap in gaps:
        now += gap
        sends.append(now + pace.reserve(now))
    assert sends == sorted(sends)
    for i in range(len(sends)):
        for j in range(i + burst, len(sends)):
            # j - i sends after the i-th: at least (j - i - burst + 1) intervals apart
            assert sends[j] - sends[i] >= (j - i - burst + 1) / rate - 1e-9


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens() -> None:
    assert [backoff(n, 1.0, 10.0) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff(3, 1.0, 10.0, jitter=0.5) == 3.0
    assert backoff(1000, 1.0, 60.0) == 60.0
