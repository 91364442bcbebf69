"""Capacity: how many chats an operator holds, and whether they may take one more.

The rule of ``queue.max_chats_per_operator`` and ``queue.count`` lives here
and only here: the distribution strategies, the router's compare-and-set
claim, its stale-claim pruning and ``lines simulate`` all ask these functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

from openlines.lines import QueueConfig
from openlines.state import OperatorState, Session

# A closed session whose close is younger than this is still being finished (its settle
# timer, SETTLE_AFTER seconds, completes it): its operator's claim on it is not stale yet.
CLOSING_FOR = 30.0


class OperatorView(msgspec.Struct, frozen=True, kw_only=True):
    """What distribution needs to know of one operator, read at decision time."""

    id: str
    status: str  # online | away | offline
    open_chats: int  # the chats that count toward capacity (open or unanswered, per the line)
    last_assigned_at: float


def counted(open_chats: int, unanswered_chats: int, queue: QueueConfig) -> int:
    """The chats that count toward capacity on this line: all open ones, or only the unanswered."""
    return unanswered_chats if queue.count == "unanswered" else open_chats


def load_of(st: OperatorState, queue: QueueConfig) -> int:
    """The chats of an operator's state that count toward their capacity on this line."""
    answered = set(st.answered)
    return counted(len(st.sessions), sum(1 for s in st.sessions if s not in answered), queue)


def has_room(load: int, queue: QueueConfig) -> bool:
    return load < queue.max_chats_per_operator


def may_be_offered(status: str, load: int, queue: QueueConfig) -> bool:
    """Whether an operator in this status with this load can be offered a chat of the line."""
    if queue.skip_offline and status != "online":
        return False
    return has_room(load, queue)


def view_of(op_id: str, st: OperatorState, queue: QueueConfig) -> OperatorView:
    return OperatorView(id=op_id, status=st.status, open_chats=load_of(st, queue), last_assigned_at=st.last_assigned_at)


def claimed_view(view: OperatorView, now: float) -> OperatorView:
    """The view after the operator was given one more chat at ``now``."""
    return msgspec.structs.replace(view, open_chats=view.open_chats + 1, last_assigned_at=now)


@dataclass(frozen=True, slots=True)
class Claim:
    """What claiming one more chat on an operator comes to.

    ``verdict``: ``held`` (it is theirs already), ``take`` (write ``state``),
    ``absent`` (not online, and the line skips such operators), ``full``
    (no room; ``stale_check`` says whether stale claims might make room).
    """

    verdict: Literal["held", "take", "absent", "full"]
    state: OperatorState | None = None


def claim(st: OperatorState, sid: str, queue: QueueConfig, now: float, *, any_status: bool = False) -> Claim:
    """Reserve one more chat (``sid``) on an operator's state; ``any_status``: the operator asked for it."""
    if sid in st.sessions:
        return Claim("held")
    if not any_status and st.status != "online" and queue.skip_offline:
        return Claim("absent")
    if not has_room(load_of(st, queue), queue):
        return Claim("full")
    return Claim("take", msgspec.structs.replace(st, sessions=[*st.sessions, sid], last_assigned_at=now))


def looks_full(st: OperatorState, queue: QueueConfig) -> bool:
    """An online operator who has no room: the one whose claims are worth checking for stale ones."""
    return st.status == "online" and not has_room(load_of(st, queue), queue)


def closing(session: Session, now: float) -> bool:
    """Closed a moment ago and the steps after it (the release first) not done yet."""
    if session.status != "closed" or session.close_finished or session.closed_at is None:
        return False
    return now - session.closed_at.timestamp() < CLOSING_FOR


def stale_claims(op_id: str, held: Mapping[str, Session | None], now: float) -> set[str]:
    """Sessions on an operator's list that are no longer theirs (gone, closed, or held by someone else).

    ``held`` maps each session on the list to its record. A router killed between
    claiming capacity and recording the offer leaves such an entry; a chat still
    waiting may be a claim in flight and is kept, and so is a chat whose close is
    still being finished (the close, or its settle timer, releases it in a moment).
    """
    stale: set[str] = set()
    for sid, session in held.items():
        gone = session is None or (not session.is_open and not closing(session, now))
        if gone or (session is not None and session.operator_id and session.operator_id != op_id):
            stale.add(sid)
    return stale


def without(st: OperatorState, stale: set[str]) -> OperatorState:
    """The state with the stale claims dropped."""
    return msgspec.structs.replace(
        st, sessions=[x for x in st.sessions if x not in stale], answered=[x for x in st.answered if x not in stale]
    )


def released(st: OperatorState, sid: str) -> OperatorState | None:
    """The state once a chat is no longer the operator's (held, answered or offered); None when it was not."""
    if sid not in st.sessions and sid not in st.answered and sid not in st.offers:
        return None
    return msgspec.structs.replace(
        st,
        sessions=[s for s in st.sessions if s != sid],
        answered=[s for s in st.answered if s != sid],
        offers=[s for s in st.offers if s != sid],
    )


def with_offer(st: OperatorState, sid: str) -> OperatorState | None:
    """A chat offered to all is on the operator's offers (capacity is claimed only on accepting)."""
    return msgspec.structs.replace(st, offers=[*st.offers, sid]) if sid not in st.offers else None


def without_offer(st: OperatorState, sid: str) -> OperatorState | None:
    return msgspec.structs.replace(st, offers=[o for o in st.offers if o != sid]) if sid in st.offers else None


def answered(st: OperatorState, sid: str) -> OperatorState | None:
    """The operator answered a chat they hold (it stops counting where only unanswered ones count)."""
    return msgspec.structs.replace(st, answered=[*st.answered, sid]) if sid not in st.answered else None


def held_answered(st: OperatorState, sid: str) -> OperatorState:
    """A supervisor took a chat over: it is theirs and answered, whatever their load."""
    if sid in st.sessions:
        return st
    return msgspec.structs.replace(st, sessions=[*st.sessions, sid], answered=[*st.answered, sid])
