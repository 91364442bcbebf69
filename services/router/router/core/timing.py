"""Timers: when each is due, and whether one that fired is stale.

Every timer carries a token of the state it was set for (the offer's number,
the last message's time, the moment the operator's last desk page closed).
When it fires, the state is read again: a timer whose state moved on (the
chat was accepted, the client wrote again, a page came back) does nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from openlines import hours
from openlines.lines import LineConfig, QueueConfig
from openlines.state import OperatorState, Session

SLACK = 0.05  # seconds a timer may fire early (clock granularity, the stream's delay rounding)
REANNOUNCE_WITHIN = 600.0  # seconds after an offer its announcement may be repeated safely (streams dedupe 15 min)


@dataclass(frozen=True, slots=True)
class Due:
    """A timer to set: due at ``due`` (epoch seconds), for the state ``token``."""

    due: float
    token: str


def offer_due(assignments: int, now: float, wait_seconds: float) -> Due:
    """The no-answer timer of offer number ``assignments`` made at ``now``."""
    return Due(now + wait_seconds, str(assignments))


def idle_due(line: LineConfig, session: Session) -> Due | None:
    """The auto-close timer after the session's latest message; None when the line never auto-closes."""
    if line.session.auto_close_minutes <= 0 or session.last_message_at is None:
        return None
    due = session.last_message_at + timedelta(minutes=line.session.auto_close_minutes)
    return Due(due.timestamp(), str(session.last_message_at.timestamp()))


def opening_due(line: LineConfig, now: datetime) -> Due | None:
    """The timer that offers a closed line's held chats when it opens; None when it never opens."""
    opening = hours.next_opening(line.hours, now)
    if opening is None:
        return None
    return Due(opening.timestamp(), opening.strftime("%Y%m%dT%H%M%S"))


def presence_grace(lines: Iterable[LineConfig]) -> float:
    """Seconds an operator with no desk page may stay as they are: the shortest grace of their lines."""
    return min((line.queue.presence_grace_seconds for line in lines), default=QueueConfig().presence_grace_seconds)


def presence_due(now: float, grace: float) -> Due:
    """The operator's last desk page closed at ``now``: offline after ``grace`` unless one comes back."""
    return Due(now + grace, str(now))


@dataclass(frozen=True, slots=True)
class OfferVerdict:
    """What a fired no-answer timer does: ``stale`` nothing, ``early`` come back in ``delay`` s, ``pass_on``."""

    action: Literal["stale", "early", "pass_on"]
    delay: float = 0.0
    reannounce: bool = False  # the offer may have been recorded but never announced: announce it first


def offer_fired(session: Session | None, token: str, line: LineConfig | None, now: float) -> OfferVerdict:
    """The no-answer timer of an offer fired: pass the chat on only when that offer is still open and its time is up."""
    if session is None or session.status != "assigned" or str(session.assignments) != token:
        return OfferVerdict("stale")
    if session.assigned_at is None or line is None:
        return OfferVerdict("pass_on")
    # A timer armed for an offer that a crash cut short, then made again later, comes early.
    left = session.assigned_at.timestamp() + line.queue.wait_seconds - now
    if left > SLACK:
        return OfferVerdict("early", delay=left)
    # A crash right after the offer was recorded left it unannounced: the trail gets it now
    # (the same ids: nothing twice while the streams' duplicate window remembers them).
    return OfferVerdict("pass_on", reannounce=-left < REANNOUNCE_WITHIN - line.queue.wait_seconds)


def idle_fired(session: Session | None, token: str) -> bool:
    """The auto-close timer closes the session only when no message came after the one it was set for."""
    return (
        session is not None
        and session.is_open
        and session.last_message_at is not None
        and str(session.last_message_at.timestamp()) == token
    )


def presence_fired(st: OperatorState | None, token: str) -> bool:
    """The grace period is over with still no desk page open, since the moment it was set for."""
    return st is not None and not st.desks and str(st.disconnected_at) == token and st.status != "offline"
