"""Session transitions and queue.reassign_on_status, decided in router.core.session."""

from __future__ import annotations

from datetime import timedelta

import pytest
from support.rules import NOW, chat

from router.core import flood
from router.core import session as transition

LATER = NOW + timedelta(seconds=30)


def test_a_waiting_chat_is_offered_to_one_operator() -> None:
    given = transition.given(chat(), "anna", NOW, from_status="waiting", expected=1)
    assert given is not None
    assert (given.status, given.operator_id, given.assignments, given.assigned_at) == ("assigned", "anna", 1, NOW)


def test_an_offer_raced_by_another_is_not_made() -> None:
    assert transition.given(chat(assignments=1), "anna", NOW, from_status="waiting", expected=1) is None
    assert transition.given(chat(status="answered"), "anna", NOW, from_status="waiting", expected=1) is None
    assert transition.given(None, "anna", NOW, from_status="waiting", expected=1) is None


def test_who_let_it_pass_is_remembered_until_a_new_round() -> None:
    passed = chat(declined_by=["anna"])
    to_boris = transition.given(passed, "boris", NOW, from_status="waiting", expected=1)
    back_to_anna = transition.given(passed, "anna", NOW, from_status="waiting", expected=1)
    assert to_boris is not None and to_boris.declined_by == ["anna"]
    assert back_to_anna is not None and back_to_anna.declined_by == []


def test_an_offer_let_pass_puts_the_chat_back_waiting_with_who_passed() -> None:
    offered = chat(status="assigned", operator_id="anna", assignments=1, assigned_at=NOW)
    back = transition.passed_back(offered, ["anna"], assignments=1)
    assert back is not None
    assert (back.status, back.operator_id, back.assigned_at, back.declined_by) == ("waiting", "", None, ["anna"])
    assert transition.passed_back(offered, ["anna"], assignments=2) is None  # a later offer: this one is over


def test_an_offer_to_all_is_taken_by_the_first_to_accept_only() -> None:
    offered = transition.offered_to_all(chat(), ["anna", "boris"], NOW, expected=1)
    assert offered is not None and offered.offered_to == ["anna", "boris"] and offered.operator_id == ""
    taken = transition.taken(offered, "boris", assignments=1)
    assert taken is not None and (taken.operator_id, taken.offered_to) == ("boris", [])
    assert transition.taken(taken, "anna", assignments=1) is None


def test_everyone_declining_an_offer_to_all_passes_it_on() -> None:
    offered = transition.offered_to_all(chat(), ["anna", "boris"], NOW, expected=1)
    one = transition.declined(offered, "anna", assignments=1)
    assert one is not None and not transition.nobody_left(one)
    both = transition.declined(one, "boris", assignments=1)
    assert both is not None and transition.nobody_left(both) and both.declined_by == ["anna", "boris"]


def test_answering_keeps_the_first_answer_time() -> None:
    first = transition.answered(chat(status="assigned", operator_id="anna"), "anna", NOW)
    assert first is not None and first.status == "answered" and first.answered_at == NOW
    again = transition.answered(chat(status="assigned", operator_id="boris", answered_at=NOW), "boris", LATER)
    assert again is not None and again.answered_at == NOW
    assert transition.answered(chat(status="assigned", operator_id="anna"), "boris", NOW) is None


def test_a_close_is_final() -> None:
    closed = transition.closed(chat(status="answered"), NOW, closed_by="anna", reason="operator")
    assert closed is not None and closed.status == "closed" and not closed.is_open
    assert transition.closed(closed, LATER, closed_by="auto", reason="auto_close") is None
    assert transition.close_told(closed) == "closed by anna"
    assert transition.close_told(chat(close_reason="auto_close")) == "closed after no activity"
    assert transition.close_told(chat(close_reason="spam")) == "marked as spam"


def test_a_close_asked_again_by_whoever_closed_it_for_that_reason_is_a_repeat_and_any_other_is_not() -> None:
    closed = transition.closed(chat(status="answered", operator_id="anna"), NOW, closed_by="anna", reason="operator")
    assert closed is not None
    assert transition.closed_already(closed, "anna", "operator")
    assert not transition.closed_already(closed, "boris", "operator")  # someone else's close: still a conflict
    assert not transition.closed_already(closed, "anna", "spam")  # marking it spam after is not a repeat
    assert not transition.closed_already(chat(status="answered", operator_id="anna"), "anna", "operator")  # still open


def test_a_supervisor_takes_any_open_chat_over_as_answered() -> None:
    taken = transition.intercepted(chat(status="assigned", offered_to=["anna", "boris"], assignments=2), "sup", NOW)
    assert taken is not None
    assert (taken.status, taken.operator_id, taken.offered_to, taken.assignments) == ("answered", "sup", [], 3)
    assert transition.intercepted(chat(status="closed"), "sup", NOW) is None


def test_a_transfer_to_a_line_puts_the_chat_in_that_lines_queue() -> None:
    moved = transition.moved_to_line(chat(status="answered", operator_id="anna"), "anna", "sales")
    assert moved is not None and (moved.line_id, moved.status, moved.operator_id) == ("sales", "waiting", "")
    assert transition.moved_to_line(chat(status="answered", operator_id="boris"), "anna", "sales") is None


@pytest.mark.parametrize(
    ("status", "pinned", "policy", "expected"),
    [
        ("assigned", False, "unanswered", "pass_on"),
        ("assigned", False, "all", "pass_on"),
        ("assigned", False, "none", "keep"),
        ("answered", False, "unanswered", "keep"),
        ("answered", False, "all", "move"),
        ("answered", True, "all", "keep"),
        ("answered", False, "none", "keep"),
    ],
)
def test_an_operator_going_away_hands_chats_on_per_reassign_on_status(
    status: str, pinned: bool, policy: str, expected: str
) -> None:
    held = chat(status=status, operator_id="anna", pinned=pinned)
    assert transition.on_operator_away(held, "anna", policy) == expected


def test_going_away_leaves_alone_chats_that_are_not_theirs_or_closed() -> None:
    assert transition.on_operator_away(chat(status="assigned", operator_id="boris"), "anna", "all") == "keep"
    assert transition.on_operator_away(chat(status="closed", operator_id="anna"), "anna", "all") == "keep"
    assert transition.on_operator_away(None, "anna", "all") == "keep"


def test_a_moved_answered_chat_does_not_go_straight_back() -> None:
    moved = transition.moved_back(chat(status="answered", operator_id="anna"), "anna")
    assert moved is not None and moved.status == "waiting" and moved.declined_by == ["anna"]


def test_a_client_message_counts_and_a_flooding_one_is_held_from_the_unread_count() -> None:
    rule = flood.FloodRule(limit=1, window=60.0, channels=frozenset({"webchat"}))
    one = transition.touched(chat(), NOW, inbound=True, rule=rule)
    assert one is not None and (one.messages_in, one.flood_count, one.flagged) == (1, 1, "")
    two = transition.touched(one, LATER, inbound=True, rule=rule)
    assert two is not None and (two.messages_in, two.flood_count, two.flagged) == (1, 2, "flood")
    reply = transition.touched(two, LATER, inbound=False)
    assert reply is not None and reply.messages_in == 1 and reply.last_message_at == LATER


def test_a_chat_taken_from_the_queue_is_answered_by_the_taker_only_while_it_waits_on_that_line() -> None:
    waiting = chat(status="waiting", line_id="support", offered_to=["boris"], declined_by=["carl"], assignments=1)
    taken = transition.taken_from_queue(waiting, "anna", "support", NOW)
    assert taken is not None
    assert (taken.status, taken.operator_id, taken.offered_to, taken.declined_by) == ("answered", "anna", [], [])
    assert (taken.assigned_at, taken.answered_at, taken.assignments) == (NOW, NOW, 2)
    assert transition.taken_from_queue(waiting, "anna", "sales", NOW) is None  # moved to another line meanwhile
    for status in ("assigned", "answered", "closed"):
        assert transition.taken_from_queue(chat(status=status, line_id="support"), "anna", "support", NOW) is None


def test_who_may_annotate_a_conversation() -> None:
    conv = chat(status="closed", line_id="support", entry_line_id="front", operator_id="anna", closed_by="boris")
    assert transition.may_annotate(conv, "anna", ["operator"], set())  # its operator
    assert transition.may_annotate(conv, "boris", ["operator"], set())  # who closed it
    assert transition.may_annotate(conv, "carl", ["operator"], {"front"})  # an operator of the line it came in on
    assert transition.may_annotate(conv, "sue", ["supervisor"], set())
    assert not transition.may_annotate(conv, "carl", ["operator"], {"sales"})
