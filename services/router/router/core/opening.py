"""Opening: which line takes a new chat, which auto-reply it gets, whether it is held.

A new chat goes to the line its channel account feeds, or, when that line is
closed and says ``outside = "redirect"``, to the redirect line (one hop: the
target's own redirect is not followed). On the line that takes it, the chat
gets the outside-hours text when that line is closed, the entry line's
outside-hours text when it was redirected, else the welcome (on first contact,
or on every session with ``welcome_each_session``). A line closed with
``outside = "hold_until_open"`` holds it, offered to nobody until it opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from openlines import hours
from openlines.lines import LineConfig
from router.core import autoreply


def is_closed(line: LineConfig, now: datetime) -> bool:
    """The line has business hours and ``now`` is outside them."""
    return line.hours.enabled and not hours.is_open(line.hours, now)


def holds(line: LineConfig, now: datetime) -> bool:
    """Chats of this line wait for its opening now, offered to nobody."""
    return line.hours.outside == "hold_until_open" and is_closed(line, now)


def route(entry: LineConfig, lines: Mapping[str, LineConfig], now: datetime) -> LineConfig:
    """The line a new chat goes to: the redirect target when the entry line is closed and says so."""
    h = entry.hours
    if h.outside == "redirect" and is_closed(entry, now):
        target = lines.get(h.redirect_line)
        if target is not None:
            return target
    return entry


@dataclass(frozen=True, slots=True)
class Reply:
    """The auto-reply a new session gets: ``kind`` names it (its message id), ``why`` explains the choice."""

    kind: Literal["outside", "welcome", ""]
    text: str
    why: str


def reply(line: LineConfig, entry: LineConfig, *, closed: bool, first_contact: bool, client_name: str) -> Reply:
    """Which auto-reply a session opened on ``line`` (fed by ``entry``) gets; ``closed``: ``line`` is closed."""
    if closed and line.auto_replies.outside_hours:
        return Reply("outside", autoreply.outside_hours(line, client_name), f"outside_hours of line {line.id}")
    if line.id != entry.id and entry.auto_replies.outside_hours:
        return Reply("outside", autoreply.outside_hours(entry, client_name), f"outside_hours of line {entry.id}")
    ar = line.auto_replies
    if ar.welcome and (first_contact or ar.welcome_each_session):
        why = "welcome, first contact" if first_contact else "welcome, welcome_each_session = true"
        return Reply("welcome", autoreply.welcome(line, client_name), why)
    if closed:
        return Reply("", "", f"line {line.id} has no outside_hours text" + ("" if ar.welcome else " and no welcome text"))
    if not ar.welcome:
        return Reply("", "", f"line {line.id} has no welcome text")
    return Reply("", "", "a returning client gets the welcome only with welcome_each_session = true")


@dataclass(frozen=True, slots=True)
class Opening:
    """Everything a new session's start decides."""

    note: str  # the transcript line of session_opened
    closed: bool  # the line that takes it is closed now
    held: bool  # it waits for the opening, offered to nobody
    reply: Reply


def open_session(line: LineConfig, entry: LineConfig, now: datetime, *, first_contact: bool, client_name: str) -> Opening:
    """The start of a session on ``line`` (``entry``: the line its channel feeds) at ``now``."""
    closed = is_closed(line, now)
    note = f"Outside business hours: redirected to {line.name}" if line.id != entry.id else f"Opened on {line.name}"
    return Opening(
        note=note,
        closed=closed,
        held=closed and line.hours.outside == "hold_until_open",
        reply=reply(line, entry, closed=closed, first_contact=first_contact, client_name=client_name),
    )


def first_contact(sessions_total: int, open_here: str, own_session: str) -> bool:
    """This is the client's first conversation ever (a crash-redelivered first message still counts as it).

    ``sessions_total``: the client's sessions so far; ``open_here``: their open session on the
    entry line ("" if none); ``own_session``: the id of the session this very message opens.
    """
    return sessions_total == 0 or (sessions_total == 1 and open_here == own_session)
