"""Session transitions: waiting -> assigned -> answered -> closed, and the ways back.

Each function takes the session as KV holds it now (None = absent) and
returns the new record, or None when the transition does not apply any more
(someone else changed the chat meanwhile). The shell runs them inside a
compare-and-set loop, so a transition is decided again on fresh state when
it races. See docs/lines.md, ``[lines.session]``, for the states.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from openlines.roles import is_supervisor
from openlines.state import Session
from router.core import flood


def touched(
    s: Session | None,
    now: datetime,
    *,
    inbound: bool,
    rule: flood.FloodRule | None = None,
    client_at: datetime | None = None,
) -> Session | None:
    """A message in the chat at ``now`` (the client's if ``inbound``); counted by the flood guard ``rule``."""
    if s is None:
        return None
    if client_at is not None and (s.client_last_at is None or client_at > s.client_last_at):
        s = msgspec.structs.replace(s, client_last_at=client_at)
    if rule is None or not inbound:
        return msgspec.structs.replace(s, last_message_at=now, messages_in=s.messages_in + (1 if inbound else 0))
    # A held message (beyond the flood limit) is not counted in messages_in: the operator's unread count stays put.
    c = flood.count(rule, s.flood_window, s.flood_count, now.timestamp())
    return msgspec.structs.replace(
        s,
        last_message_at=now,
        messages_in=s.messages_in + (0 if c.held(rule) else 1),
        flood_window=c.window_start,
        flood_count=c.count,
        flagged="flood" if c.first_held(rule) else s.flagged,
    )


def held(s: Session | None) -> Session | None:
    """Outside hours with hold_until_open: the chat waits for the opening."""
    return msgspec.structs.replace(s, held=True) if s is not None and not s.held else None


def given(s: Session | None, op_id: str, now: datetime, *, from_status: str, expected: int) -> Session | None:
    """Offered to one operator (offer number ``expected``); the no-answer timer runs from ``now``.

    The operators who let the chat pass are remembered, so the next offer skips
    them, until the offer goes to one of them again or to the only one left:
    then a new round starts.
    """
    if s is None or s.status != from_status or s.assignments + 1 != expected:
        return None
    restart = not [d for d in s.declined_by if d != op_id] or op_id in s.declined_by
    return msgspec.structs.replace(
        s,
        status="assigned",
        operator_id=op_id,
        assigned_at=now,
        assignments=expected,
        declined_by=[] if restart else s.declined_by,
        held=False,
    )


def offered_to_all(s: Session | None, ops: list[str], now: datetime, *, expected: int) -> Session | None:
    """Offered to every one of ``ops`` at once (offer number ``expected``); nobody holds it yet."""
    if s is None or s.status != "waiting" or s.assignments + 1 != expected:
        return None
    return msgspec.structs.replace(
        s, status="assigned", operator_id="", offered_to=ops, assigned_at=now, assignments=expected, held=False
    )


def taken(s: Session | None, op_id: str, *, assignments: int) -> Session | None:
    """The first of the operators offered the chat to accept it takes it."""
    if s is None or s.status != "assigned" or s.operator_id or op_id not in s.offered_to or s.assignments != assignments:
        return None
    return msgspec.structs.replace(s, operator_id=op_id, offered_to=[])


def passed_back(s: Session | None, passing: list[str], *, assignments: int) -> Session | None:
    """The offer was let pass (skipped, no answer, operator away): waiting again, ``passing`` remembered."""
    if s is None or s.status != "assigned" or s.assignments != assignments:
        return None
    return msgspec.structs.replace(
        s, status="waiting", operator_id="", offered_to=[], assigned_at=None, declined_by=[*s.declined_by, *passing]
    )


def declined(s: Session | None, op_id: str, *, assignments: int) -> Session | None:
    """One of several operators offered the chat declines it; the others' offers stand."""
    if s is None or s.assignments != assignments or op_id not in s.offered_to or s.operator_id:
        return None
    return msgspec.structs.replace(s, offered_to=[o for o in s.offered_to if o != op_id], declined_by=[*s.declined_by, op_id])


def nobody_left(s: Session) -> bool:
    """An offer to all that everyone declined: it passes on."""
    return s.status == "assigned" and not s.operator_id and not s.offered_to


def moved_back(s: Session | None, op_id: str) -> Session | None:
    """An answered chat leaves its operator (away, reassign_on_status = "all"): waiting, not straight back to them."""
    if s is None or s.status != "answered" or s.operator_id != op_id:
        return None
    return msgspec.structs.replace(s, status="waiting", operator_id="", assigned_at=None, declined_by=[op_id])


def answered(s: Session | None, op_id: str, now: datetime) -> Session | None:
    """The operator accepted or replied. ``answered_at`` stays the first answer (a chat moved on and
    accepted again was answered already): the sessions API and the statistics' first response agree."""
    if s is None or s.status != "assigned" or s.operator_id != op_id:
        return None
    return msgspec.structs.replace(s, status="answered", answered_at=s.answered_at or now, declined_by=[])


def moved_to_line(s: Session | None, op_id: str, line_id: str) -> Session | None:
    """Transferred to another line by its operator: waiting in that line's queue."""
    if s is None or not s.is_open or s.operator_id != op_id:
        return None
    return msgspec.structs.replace(s, line_id=line_id, status="waiting", operator_id="", assigned_at=None, declined_by=[])


def reoffered(s: Session | None, op_id: str, from_status: str) -> Session | None:
    """Transferred to another operator: waiting for the offer to them (their capacity is claimed already)."""
    if s is None or s.operator_id != op_id or s.status != from_status:
        return None
    return msgspec.structs.replace(s, status="waiting")


def intercepted(s: Session | None, op_id: str, now: datetime) -> Session | None:
    """A supervisor takes the chat over, whoever holds or is offered it: answered, theirs."""
    if s is None or not s.is_open:
        return None
    return msgspec.structs.replace(
        s,
        status="answered",
        operator_id=op_id,
        offered_to=[],
        declined_by=[],
        assigned_at=s.assigned_at or now,
        answered_at=s.answered_at or now,
        assignments=s.assignments + 1,
        held=False,
    )


def taken_from_queue(s: Session | None, op_id: str, line_id: str, now: datetime) -> Session | None:
    """An operator of the line takes a chat waiting in its queue: answered, theirs; None when it no longer waits there."""
    if s is None or s.status != "waiting" or s.line_id != line_id:
        return None
    return msgspec.structs.replace(
        s,
        status="answered",
        operator_id=op_id,
        offered_to=[],
        declined_by=[],
        assigned_at=now,
        answered_at=s.answered_at or now,
        assignments=s.assignments + 1,
        held=False,
    )


def may_annotate(s: Session, op_id: str, roles: list[str], my_lines: set[str]) -> bool:
    """Who may tag a conversation or write a note in it: its operators, the operators of its line, supervisors."""
    return (
        is_supervisor(roles)
        or op_id in (s.operator_id, s.closed_by)
        or op_id in s.offered_to
        or bool({s.line_id, s.entry_line_id} & my_lines)
    )


def pinned(s: Session | None, pin: bool) -> Session | None:
    return msgspec.structs.replace(s, pinned=pin) if s is not None and s.pinned != pin else None


def closed(s: Session | None, now: datetime, *, closed_by: str, reason: str) -> Session | None:
    if s is None or not s.is_open:
        return None
    return msgspec.structs.replace(s, status="closed", closed_at=now, closed_by=closed_by, close_reason=reason)


def closed_already(s: Session, closed_by: str, reason: str) -> bool:
    """The chat is closed, by ``closed_by`` for ``reason``: a close asked again (the desk repeats one it got no
    answer to) is answered as done, not refused as a conflict."""
    return not s.is_open and s.closed_by == closed_by and s.close_reason == reason


def close_finished(s: Session | None) -> Session | None:
    return msgspec.structs.replace(s, close_finished=True) if s is not None and not s.close_finished else None


def rated(s: Session | None, rating: int) -> Session | None:
    return msgspec.structs.replace(s, rating=rating) if s is not None and s.rating != rating else None


CLOSE_REASONS = {"auto_close": "closed after no activity", "spam": "marked as spam"}


def close_told(s: Session) -> str:
    """The reason of session_closed as machines read it (the operator's login, not their name)."""
    if s.close_reason == "operator":
        return f"closed by {s.closed_by}"
    return CLOSE_REASONS.get(s.close_reason, s.close_reason)


def on_operator_away(s: Session | None, op_id: str, policy: str) -> Literal["pass_on", "move", "keep"]:
    """What ``queue.reassign_on_status`` does with a chat of an operator going away or offline.

    ``unanswered``: an offered chat passes on; ``all``: an answered one moves on too,
    unless its operator pinned it; ``none``: nothing moves.
    """
    if s is None or s.operator_id != op_id or not s.is_open:
        return "keep"
    if s.status == "assigned" and policy in ("unanswered", "all"):
        return "pass_on"
    if s.status == "answered" and policy == "all" and not s.pinned:
        return "move"
    return "keep"
