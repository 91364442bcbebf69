"""The client's record: which messages were applied, their open sessions, the rating request.

A rating request stays open for ``RATING_WINDOW`` after the close; the
client's next message, if it is just a mark from 1 to 5 (``5``, ``4/5``,
``3 of 5``, ``5!``), rates the closed session and opens no new conversation.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec

from openlines.envelopes import ClientProfile, Inbound
from openlines.state import RECENT_IDS_KEPT, ClientRecord

RATING_WINDOW = 24 * 3600.0  # seconds a rating request stays open after the close

_RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5|of\s*5|\*+|⭐+)?\s*[.!]?\s*$", re.IGNORECASE)


def rating_in(text: str) -> int | None:
    """A reply that is just a mark from 1 to 5 ("5", "4/5", "3 of 5", "5!"), else None."""
    m = _RATING.match(text)
    return int(m.group(1)) if m else None


def rating_of(client: ClientRecord, text: str, now: float) -> int | None:
    """The mark this message gives the client's closed session, when a rating request is open."""
    if not client.rating_for or now >= client.rating_until:
        return None
    return rating_in(text)


def client_time(msg: Inbound) -> datetime:
    """When the client wrote: the channel's own time when it says, never later than we got it."""
    return min(msg.sent_at, msg.received_at) if msg.sent_at is not None else msg.received_at


def merge_profile(old: ClientProfile, new: ClientProfile) -> ClientProfile:
    """Newer non-empty profile fields win; nothing known is forgotten."""
    merged = {f: getattr(new, f) or getattr(old, f) for f in old.__struct_fields__}
    return msgspec.structs.replace(old, **merged)


def remembered(rec: ClientRecord, msg: Inbound) -> ClientRecord:
    """The message was applied: its id is kept (a redelivery is ignored) and any rating request is over."""
    return msgspec.structs.replace(
        rec,
        profile=merge_profile(rec.profile, msg.profile),
        recent_msg_ids=[*rec.recent_msg_ids, msg.id][-RECENT_IDS_KEPT:],
        rating_for="",  # answered (a rating) or moved on (anything else): the request is over
        rating_until=0.0,
    )


def linked(rec: ClientRecord, msg: Inbound, entry_line: str, sid: str) -> ClientRecord:
    """The client points at the session just opened on ``entry_line``, with this message's profile."""
    if rec.open_sessions.get(entry_line) == sid:
        return rec
    return msgspec.structs.replace(
        rec,
        profile=merge_profile(rec.profile, msg.profile),
        open_sessions={**rec.open_sessions, entry_line: sid},
        sessions_total=rec.sessions_total + 1,
    )


def forgotten(c: ClientRecord | None, entry_line: str, sid: str) -> ClientRecord | None:
    """The session closed: the client has no open one on that line any more."""
    if c is None or c.open_sessions.get(entry_line) != sid:
        return None
    return msgspec.structs.replace(c, open_sessions={k: v for k, v in c.open_sessions.items() if k != entry_line})


def awaiting_rating(c: ClientRecord | None, sid: str, now: float) -> ClientRecord | None:
    return msgspec.structs.replace(c, rating_for=sid, rating_until=now + RATING_WINDOW) if c is not None else None


def marked_spam(c: ClientRecord | None) -> ClientRecord | None:
    return msgspec.structs.replace(c, spam=True) if c is not None and not c.spam else None
