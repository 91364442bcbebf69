"""The SLA clock of one chat: which response target runs, since when, and whether it was passed.

Pure: the shell (router/sla.py) feeds it the chat's transcript entries in order and asks it,
when a timer falls due, whether the clock it was set for has run out.

- first response: from the client's first message of the session to the first operator message;
- next response: from a client message that follows an operator message to the next operator message.

Auto-replies and system lines never stop a clock; more client messages while a clock runs do not
restart it (the client has waited since the first unanswered one).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from openlines.lines import SlaConfig

Target = Literal["first_response", "next_response"]
EntryKind = Literal["client", "operator", "other"]

TARGET_WORDS: dict[str, str] = {"first_response": "first response", "next_response": "next response"}


class Clock(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What the ``ol-sla`` bucket holds per session (key: the session id)."""

    session_id: str
    line_id: str
    answered: bool = False  # an operator has written in this session
    target: Target | None = None  # the clock running, None when the client waits for nobody
    since: float = 0.0  # epoch seconds of the client message that started it
    due: float = 0.0  # since + the target
    limit: int = 0  # the target, seconds
    breached: bool = False  # the running clock has already raised its alert
    seq: int = 0  # the OL_HIST sequence of the last entry that changed it: older ones are ignored

    @property
    def token(self) -> str:
        """Which clock a timer was set for: another clock (or none) makes it stale."""
        return f"{self.target}:{self.since:.3f}"


class Breach(msgspec.Struct, kw_only=True, frozen=True):
    target: Target
    limit: int  # seconds
    waited: float  # seconds since the client message that started the clock
    over: float  # seconds past the target

    @property
    def reason(self) -> str:
        return (
            f"{TARGET_WORDS[self.target]} target {_span(self.limit)} passed by {_span(self.over)}"
            f" (client waiting {_span(self.waited)})"
        )


def entry_kind(direction: str, author_id: str) -> EntryKind:
    """A transcript entry as the clock sees it: auto-replies (author "auto") are not an operator's answer."""
    if direction == "in":
        return "client"
    if direction == "out" and author_id and author_id != "auto":
        return "operator"
    return "other"


def apply(
    clock: Clock | None, *, session_id: str, line_id: str, kind: EntryKind, at: float, seq: int, sla: SlaConfig
) -> Clock | None:
    """The clock after one transcript entry (``seq``: its place in the transcript stream), or None when
    it does not change. An entry older than the one that last changed the clock is superseded by it:
    redelivered, or overtaken by a later one handled first."""
    if clock is not None and seq <= clock.seq:
        return None
    base = clock or Clock(session_id=session_id, line_id=line_id)
    if kind == "operator":
        if clock is not None and clock.answered and clock.target is None:
            return None
        return msgspec.structs.replace(base, answered=True, target=None, since=0.0, due=0.0, limit=0, breached=False, seq=seq)
    if kind != "client" or base.target is not None:
        return None
    target: Target = "next_response" if base.answered else "first_response"
    limit = sla.next_response_seconds if base.answered else sla.first_response_seconds
    if limit <= 0:
        return None
    return msgspec.structs.replace(
        base, line_id=line_id, target=target, since=at, due=at + limit, limit=limit, breached=False, seq=seq
    )


def check(clock: Clock | None, token: str, now: float) -> Breach | float | None:
    """When a timer set for ``token`` falls due: the breach, the seconds still to wait, or None (stale)."""
    if clock is None or clock.target is None or clock.breached or clock.token != token:
        return None
    if now < clock.due:
        return clock.due - now
    return Breach(target=clock.target, limit=clock.limit, waited=now - clock.since, over=now - clock.due)


def _span(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60} min" if rest // 60 else f"{h} h"
