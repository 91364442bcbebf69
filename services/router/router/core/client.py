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
from openlines.state import RECENT_IDS_KEPT, ClientRecord, Session

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


def merge_profile(old: ClientProfile, new: ClientProfile, keep: list[str] | tuple[str, ...] = ()) -> ClientProfile:
    """Newer non-empty profile fields win; nothing known is forgotten; what an operator set (``keep``) stays."""
    merged = {f: getattr(old, f) if f in keep else getattr(new, f) or getattr(old, f) for f in old.__struct_fields__}
    return msgspec.structs.replace(old, **merged)


# -- what operators change: the person's name, phone and e-mail (decision 024) ------------------

PERSON_FIELDS = ("name", "phone", "email")
MAX_NAME = 200
_PHONE = re.compile(r"\+[1-9][0-9]{6,14}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,252}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BadEdit(ValueError):
    """An edit the router will not store, with the reason an operator can act on."""


def checked_edit(name: str | None, phone: str | None, email: str | None) -> dict[str, str]:
    """The fields an edit sets (None = left as is). The desk normalises; this is the router's own check."""
    out: dict[str, str] = {}
    if name is not None:
        name = " ".join(name.split())
        if len(name) > MAX_NAME or _CONTROL.search(name):
            raise BadEdit(f"the name must be at most {MAX_NAME} characters of text")
        out["name"] = name
    if phone is not None:
        if phone and not _PHONE.fullmatch(phone):
            raise BadEdit("the phone must be in E.164 form: + and the country code, 7-15 digits")
        out["phone"] = phone
    if email is not None:
        if email and (len(email) > 254 or not _EMAIL.fullmatch(email) or email != email.lower()):
            raise BadEdit("the e-mail must be one lower-case address, name@domain")
        out["email"] = email
    if not out:
        raise BadEdit("nothing to change: give name, phone or email")
    return out


def edited(rec: ClientRecord | None, changes: dict[str, str]) -> ClientRecord | None:
    """The record with an operator's values; None if it has them already."""
    if rec is None:
        return None
    if all(getattr(rec.profile, f) == v for f, v in changes.items()) and set(changes) <= set(rec.edited):
        return None
    return msgspec.structs.replace(
        rec,
        profile=msgspec.structs.replace(rec.profile, **changes),
        edited=sorted({*rec.edited, *changes}),
    )


def person_of(survivor: ClientProfile, other: ClientProfile) -> dict[str, str]:
    """Name, phone and e-mail of two merged clients: the surviving client's where it has one, else the other's."""
    return {f: getattr(survivor, f) or getattr(other, f) for f in PERSON_FIELDS}


def merged(
    rec: ClientRecord | None,
    *,
    own_key: str,
    client_id: str,
    keys: set[str],
    merged_ids: set[str],
    person: dict[str, str],
    edited_fields: set[str],
) -> ClientRecord | None:
    """One chat of a merged client: it belongs to ``client_id``, knows the others, and carries the person's fields."""
    if rec is None:
        return None
    return msgspec.structs.replace(
        rec,
        client_id=client_id,
        identities=sorted(keys - {own_key}),
        merged_ids=sorted(merged_ids - {client_id}),
        profile=msgspec.structs.replace(rec.profile, **person),
        edited=sorted({*rec.edited, *edited_fields}),
    )


def name_of(rec: ClientRecord | None, msg: Inbound) -> str:
    """The client's name on a new conversation: an operator's (decision 024), else the channel's, else the one known."""
    if rec is not None and "name" in rec.edited:
        return rec.profile.name or msg.profile.name
    return msg.profile.name or (rec.profile.name if rec else "")


def remembered(rec: ClientRecord, msg: Inbound) -> ClientRecord:
    """The message was applied: its id is kept (a redelivery is ignored) and any rating request is over."""
    return msgspec.structs.replace(
        rec,
        profile=merge_profile(rec.profile, msg.profile, rec.edited),
        recent_msg_ids=[*rec.recent_msg_ids, msg.id][-RECENT_IDS_KEPT:],
        rating_for="",  # answered (a rating) or moved on (anything else): the request is over
        rating_until=0.0,
    )


def linked(rec: ClientRecord, msg: Inbound, entry_line: str, sid: str) -> ClientRecord:
    """The client points at the session just opened on ``entry_line``, with this message's profile.

    The message that opened it is remembered in the same write (one round trip, not two): a
    redelivery of it is told apart by ``resumes`` - the start of its session is finished
    then, or it is not, and the redelivery finishes it.
    """
    if rec.open_sessions.get(entry_line) == sid and msg.id in rec.recent_msg_ids:
        return rec
    rec = remembered(rec, msg)
    if rec.open_sessions.get(entry_line) == sid:
        return rec
    return msgspec.structs.replace(
        rec, open_sessions={**rec.open_sessions, entry_line: sid}, sessions_total=rec.sessions_total + 1
    )


def opened_by(rec: ClientRecord, entry_line: str, own_sid: str) -> bool:
    """Whether the client's open session on ``entry_line`` is ``own_sid``, the one a message opened."""
    return rec.open_sessions.get(entry_line) == own_sid


def resumes(rec: ClientRecord, msg_id: str, entry_line: str, own_sid: str, session: Session | None, queued: bool) -> bool:
    """A message already remembered is handled again only to finish the start of the session it opened.

    That start was cut short (a crash) when the session still waits but is in no queue: a
    started session is offered, or queued, or held in the queue. ``queued``: it is in its
    line's queue. Any other message already remembered is a duplicate.
    """
    if msg_id not in rec.recent_msg_ids or not opened_by(rec, entry_line, own_sid):
        return False
    return session is not None and session.id == own_sid and session.status == "waiting" and not queued


def forgotten(c: ClientRecord | None, entry_line: str, sid: str) -> ClientRecord | None:
    """The session closed: the client has no open one on that line any more."""
    if c is None or c.open_sessions.get(entry_line) != sid:
        return None
    return msgspec.structs.replace(c, open_sessions={k: v for k, v in c.open_sessions.items() if k != entry_line})


def awaiting_rating(c: ClientRecord | None, sid: str, now: float) -> ClientRecord | None:
    return msgspec.structs.replace(c, rating_for=sid, rating_until=now + RATING_WINDOW) if c is not None else None


def marked_spam(c: ClientRecord | None) -> ClientRecord | None:
    return msgspec.structs.replace(c, spam=True) if c is not None and not c.spam else None
