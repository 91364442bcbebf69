from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway_vk.core.outbound import INT32_MAX, random_id, split_text, verdict


def test_random_id_is_stable_per_message_and_part_and_never_zero() -> None:
    assert random_id("out:s:r1") == random_id("out:s:r1", 0)
    assert random_id("out:s:r1", 0) != random_id("out:s:r1", 1)
    assert random_id("out:s:r1") != random_id("out:s:r2")


@given(st.text(max_size=80), st.integers(min_value=0, max_value=1000))
def test_random_id_is_always_in_the_positive_int32_range(out_id: str, part: int) -> None:
    assert 1 <= random_id(out_id, part) <= INT32_MAX


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=3000), st.integers(min_value=100, max_value=1200))
def test_split_parts_fit_the_limit_and_keep_every_word(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert all(len(p) <= limit for p in parts)
    assert "".join(parts).split() == text.split()
    if len(text) <= limit:
        assert parts == [text]


def test_split_prefers_paragraph_then_line_then_word_ends() -> None:
    text = "a" * 60 + "\n\n" + "b" * 60
    assert split_text(text, 100) == ["a" * 60, "b" * 60]
    assert split_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_rate_and_server_errors_are_retried_permission_and_size_errors_are_not() -> None:
    assert [verdict(c) for c in (6, 9, 10, 29)] == ["retry"] * 4
    assert [verdict(c) for c in (5, 100, 901, 902, 914)] == ["permanent"] * 5
