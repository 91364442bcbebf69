"""queue.max_chats_per_operator, queue.count and queue.skip_offline, decided in router.core.capacity."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st
from support.rules import NOW, chat, operator

from openlines.lines import QueueConfig
from router.core import capacity


def test_open_chats_count_toward_capacity_by_default() -> None:
    op = operator("anna", sessions=["s1", "s2", "s3"], answered=["s1", "s2"])
    assert capacity.load_of(op, QueueConfig()) == 3


def test_only_unanswered_chats_count_when_the_line_says_so() -> None:
    op = operator("anna", sessions=["s1", "s2", "s3"], answered=["s1", "s2"])
    assert capacity.load_of(op, QueueConfig(count="unanswered")) == 1


def test_a_full_operator_cannot_claim_another_chat() -> None:
    queue = QueueConfig(max_chats_per_operator=2)
    op = operator("anna", sessions=["s1", "s2"])
    assert capacity.claim(op, "s3", queue, NOW.timestamp()).verdict == "full"


def test_a_claim_adds_the_chat_and_marks_the_assignment_time() -> None:
    queue = QueueConfig(max_chats_per_operator=2)
    decided = capacity.claim(operator("anna", sessions=["s1"]), "s2", queue, 123.0)
    assert decided.verdict == "take"
    assert decided.state is not None
    assert decided.state.sessions == ["s1", "s2"]
    assert decided.state.last_assigned_at == 123.0


def test_a_chat_already_held_is_claimed_again_without_a_write() -> None:
    decided = capacity.claim(operator("anna", sessions=["s1"]), "s1", QueueConfig(max_chats_per_operator=1), 1.0)
    assert decided.verdict == "held" and decided.state is None


def test_an_operator_not_online_is_skipped_unless_the_line_allows_it_or_they_ask() -> None:
    away = operator("anna", status="away")
    assert capacity.claim(away, "s1", QueueConfig(), 1.0).verdict == "absent"
    assert capacity.claim(away, "s1", QueueConfig(skip_offline=False), 1.0).verdict == "take"
    assert capacity.claim(away, "s1", QueueConfig(), 1.0, any_status=True).verdict == "take"  # accepting an offer to all
    assert not capacity.may_be_offered("offline", 0, QueueConfig())
    assert capacity.may_be_offered("offline", 0, QueueConfig(skip_offline=False))


def test_a_stale_claim_is_one_whose_chat_is_gone_closed_or_someone_elses() -> None:
    now = NOW.timestamp()
    held = {
        "gone": None,
        "closed": chat(id="closed", status="closed", closed_at=NOW - timedelta(minutes=5), close_finished=True),
        "closing": chat(id="closing", status="closed", closed_at=NOW - timedelta(seconds=2)),
        "other": chat(id="other", status="assigned", operator_id="boris"),
        "mine": chat(id="mine", status="answered", operator_id="anna"),
        "in_flight": chat(id="in_flight", status="waiting"),
    }
    assert capacity.stale_claims("anna", held, now) == {"gone", "closed", "other"}


def test_a_close_left_unfinished_long_ago_no_longer_holds_the_operator() -> None:
    cut_short = chat(status="closed", closed_at=NOW - timedelta(seconds=capacity.CLOSING_FOR + 1))
    assert capacity.stale_claims("anna", {"s1": cut_short}, NOW.timestamp()) == {"s1"}


def test_stale_claims_dropped_make_room() -> None:
    queue = QueueConfig(max_chats_per_operator=1)
    full = operator("anna", sessions=["old"], answered=["old"])
    assert capacity.looks_full(full, queue)
    assert capacity.claim(capacity.without(full, {"old"}), "new", queue, 1.0).verdict == "take"


def test_release_drops_the_chat_from_held_answered_and_offers() -> None:
    op = operator("anna", sessions=["s1", "s2"], answered=["s1"], offers=["s1", "s3"])
    out = capacity.released(op, "s1")
    assert out is not None and (out.sessions, out.answered, out.offers) == (["s2"], [], ["s3"])
    assert capacity.released(op, "nope") is None


@given(
    limit=st.integers(1, 5),
    held=st.lists(st.sampled_from([f"s{i}" for i in range(8)]), unique=True),
    answered=st.sets(st.sampled_from([f"s{i}" for i in range(8)])),
    count=st.sampled_from(["open", "unanswered"]),
)
def test_a_claim_never_puts_an_operator_over_the_limit(limit: int, held: list[str], answered: set[str], count: str) -> None:
    queue = QueueConfig(max_chats_per_operator=limit, count=count)  # type: ignore[arg-type]
    op = operator("anna", sessions=held, answered=sorted(answered & set(held)))
    decided = capacity.claim(op, "new", queue, 1.0)
    if decided.state is not None:
        assert capacity.load_of(decided.state, queue) <= limit
    assert (decided.verdict == "take") == (capacity.load_of(op, queue) < limit)
