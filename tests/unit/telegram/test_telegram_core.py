"""Pure parts of the Telegram gateway: splitting long text, pacing, backoff."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

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
