"""What a tag may be, and adding and removing them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openlines import tags


@pytest.mark.parametrize(
    ("raw", "stored"),
    [("VIP", "vip"), ("  refund ", "refund"), ("Доставка", "доставка"), ("b2b.eu", "b2b.eu"), ("follow-up_2", "follow-up_2")],
)
def test_a_tag_is_stored_trimmed_and_in_lower_case(raw: str, stored: str) -> None:
    assert tags.normalise(raw) == stored


@pytest.mark.parametrize("raw", ["", "   ", "two words", "<b>", "-start", "_start", "x" * 33, "a/b", "ta\tg", "ta\ng"])
def test_what_is_not_a_tag_is_refused_with_a_reason(raw: str) -> None:
    with pytest.raises(tags.BadTag):
        tags.normalise(raw)


def test_adding_keeps_the_order_and_never_doubles_and_removing_wins() -> None:
    assert tags.applied(["a", "b"], ["c", "a"], []) == ["a", "b", "c"]
    assert tags.applied(["a", "b"], ["c"], ["a", "c"]) == ["b"]
    with pytest.raises(tags.BadTag):
        tags.applied([f"t{i}" for i in range(tags.MAX_TAGS)], ["one-more"], [])


@given(st.text(max_size=40))
def test_a_stored_tag_is_stored_as_it_is(raw: str) -> None:
    try:
        tag = tags.normalise(raw)
    except tags.BadTag:
        return
    assert tags.normalise(tag) == tag and " " not in tag and 0 < len(tag) <= tags.MAX_TAG_LENGTH
