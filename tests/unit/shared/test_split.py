"""Cutting a long reply into messages (openlines.split): both ways of counting, and the edges of the limit."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlines.split import Units, split_text, utf16_len

_WS = re.compile(r"\s")
EMOJI = "😀"  # outside the BMP: one character, two UTF-16 units

_texts = st.text(alphabet=st.sampled_from(["a", "б", " ", "\n", "\t", EMOJI, "x", "\u0301"]), max_size=300) | st.text(
    max_size=200
)


@given(_texts, st.integers(2, 40))
def test_utf16_parts_fit_the_limit_and_keep_every_visible_character_in_order(text: str, limit: int) -> None:
    parts = split_text(text, limit, units="utf16")
    assert all(p.strip() and utf16_len(p) <= limit for p in parts)
    assert _WS.sub("", "".join(parts)) == _WS.sub("", text)


@given(_texts, st.integers(2, 40))
def test_char_parts_fit_the_limit_and_keep_every_visible_character_in_order(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(p.strip() and len(p) <= limit for p in parts)
    assert _WS.sub("", "".join(parts)) == _WS.sub("", text)


@given(st.text(max_size=10_000))
def test_every_word_stays_whole_and_in_order_when_cut_at_spaces(text: str) -> None:
    parts = split_text(text, 100)
    assert all(0 < len(p) <= 100 and p.strip() for p in parts)
    assert "".join(parts).split() == text.split() or "".join(" ".join(parts).split()) == "".join(text.split())


@pytest.mark.parametrize("units", ["chars", "utf16"])
def test_short_text_is_one_part_and_blank_text_none(units: Units) -> None:
    assert split_text("hello", 4096, units=units) == ["hello"]
    assert split_text("  \n\t ", 4096, units=units) == []
    assert split_text("", 4096, units=units) == []


@pytest.mark.parametrize("units", ["chars", "utf16"])
def test_text_of_exactly_the_limit_is_one_part_and_one_more_is_two(units: Units) -> None:
    assert split_text("x" * 4096, 4096, units=units) == ["x" * 4096]
    assert split_text("x" * 4097, 4096, units=units) == ["x" * 4096, "x"]
    assert [len(p) for p in split_text("x" * 5000, 4096, units=units)] == [4096, 904]


def test_long_text_is_cut_at_the_last_line_break_then_at_a_space_then_hard() -> None:
    assert split_text("aaaa bbbb\ncccc dddd", 12) == ["aaaa bbbb", "cccc dddd"]
    assert split_text("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]
    assert split_text("aaaa\tbbbb cccc", 10) == ["aaaa\tbbbb", "cccc"]
    assert split_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert split_text("a" * 4000 + "\n" + "b" * 200, 4096) == ["a" * 4000, "b" * 200]


def test_a_break_that_is_the_last_character_within_the_limit_is_used_and_dropped() -> None:
    assert split_text("abc\nefgh", 4) == ["abc", "efgh"]
    assert split_text("abc efgh", 4, units="utf16") == ["abc", "efgh"]


def test_a_hard_cut_just_before_a_line_break_does_not_spend_the_next_parts_room_on_it() -> None:
    assert split_text("abcd\nefgh", 4) == ["abcd", "efgh"]  # not "abcd", "efg", "h"
    assert split_text("abcd\n\n\nefgh", 4, units="utf16") == ["abcd", "efgh"]


def test_a_leading_space_is_no_place_to_cut() -> None:
    assert split_text(" abcdefg", 4) == [" abc", "defg"]


def test_an_emoji_counts_two_utf16_units_and_one_character() -> None:
    assert split_text(EMOJI * 5, 4, units="utf16") == [EMOJI * 2, EMOJI * 2, EMOJI]
    assert split_text(EMOJI * 5, 4) == [EMOJI * 4, EMOJI]


def test_an_emoji_that_would_straddle_the_utf16_limit_starts_the_next_part() -> None:
    assert split_text("abc" + EMOJI + "d", 4, units="utf16") == ["abc", EMOJI + "d"]
    assert split_text("ab" + EMOJI + "c", 4, units="utf16") == ["ab" + EMOJI, "c"]  # ends exactly at the limit
    assert split_text("x" * 4095 + EMOJI, 4096, units="utf16") == ["x" * 4095, EMOJI]
    assert split_text("x" * 4094 + EMOJI, 4096, units="utf16") == ["x" * 4094 + EMOJI]


def test_multi_byte_characters_count_as_one_character_and_one_utf16_unit() -> None:
    text = "б" * 4097  # two bytes in UTF-8, one UTF-16 unit
    units: Units
    for units in ("chars", "utf16"):
        assert [len(p) for p in split_text(text, 4096, units=units)] == [4096, 1]


def test_utf16_length_counts_surrogate_pairs_twice_and_a_lone_surrogate_once() -> None:
    assert utf16_len("aб" + EMOJI) == 4
    assert utf16_len("a\ud83d") == 2  # not encodable as UTF-16; counted as split_text counts it, not an error
    assert split_text("\ud83d" * 5, 4, units="utf16") == ["\ud83d" * 4, "\ud83d"]


def test_a_limit_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        split_text("abc", 1)
