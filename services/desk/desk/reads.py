"""What the desk shows, read straight from KV and the transcript stream.

The desk never writes these; the router does. Everything here is a read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from openlines import subjects, templates, window
from openlines.apply import line_key
from openlines.bus import Buckets, kv_get, read_subject
from openlines.envelopes import MARK_STATUSES, DeliveryMark, HistoryEntry, SessionEvent, utcnow
from openlines.lines import LineConfig, MessageTemplate
from openlines.state import ClientRecord, OperatorAccount, OperatorState, Session, client_key

LINE_NAME_TTL = 30.0

_history_decoder = msgspec.json.Decoder(HistoryEntry)
_mark_decoder = msgspec.json.Decoder(DeliveryMark)
# A later mark never hides an earlier, stronger one (callbacks arrive out of order); "failed" wins over all.
_RANK = {status: i for i, status in enumerate(MARK_STATUSES)}


def best_marks(marks: list[DeliveryMark]) -> dict[str, dict[str, Any]]:
    """Outbound message id -> the strongest mark seen for it (of any of its parts): status, reason, at."""
    out: dict[str, dict[str, Any]] = {}
    for m in marks:
        have = out.get(m.message_id)
        if have is None or _RANK[m.status] > _RANK[have["status"]]:
            out[m.message_id] = {"status": m.status, "reason": m.reason, "at": m.at.isoformat()}
    return out


def is_token(value: str) -> bool:
    """Whether ``value`` can be a KV key / subject token (ids come from URLs and cookies)."""
    try:
        subjects.token(value, "id")
    except subjects.BadToken:
        return False
    return True


def holders_of(session: Session | None) -> frozenset[str]:
    """The operators whose desks show this session now: its operator, or everyone
    it is offered to (a line in mode "all"); none when waiting, closed or gone."""
    if session is None or session.status not in ("assigned", "answered"):
        return frozenset()
    if session.operator_id:
        return frozenset({session.operator_id})
    return frozenset(session.offered_to)


def sla_clock(clock: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored SLA clock (router.core.sla.Clock) as the page counts it down: which target, its
    length, until when, and whether the supervisors were alerted; None when no clock runs."""
    if not clock or not clock.get("target"):
        return None
    return {
        "target": clock["target"],
        "limit": int(clock.get("limit", 0)),
        "due": datetime.fromtimestamp(float(clock.get("due", 0)), UTC).isoformat(),
        "breached": bool(clock.get("breached", False)),
    }


CLOSE_REASONS = {"operator": "closed by its operator", "auto_close": "closed after no activity", "spam": "marked as spam"}


class Reader:
    def __init__(self, js: JetStreamContext, buckets: Buckets) -> None:
        self.js = js
        self.b = buckets
        self._lines: dict[str, tuple[LineConfig | None, float]] = {}
        self._sla: KeyValue | None = None
        self.preview: Callable[[str], dict[str, str] | None] | None = None  # a chat's last message (desk.index)

    async def sla_bucket(self) -> KeyValue | None:
        """The router's SLA clocks (``ol-sla``), or None before a router made the bucket."""
        if self._sla is None:
            try:
                self._sla = await self.js.key_value(subjects.KV_SLA)
            except (NotFoundError, BadRequestError):
                return None
        return self._sla

    async def sla(self, session_id: str) -> dict[str, Any] | None:
        """The session's running SLA clock as the page shows it (see ``sla_clock``), or None."""
        kv = await self.sla_bucket()
        if kv is None or not is_token(session_id):
            return None
        clock, _ = await kv_get(kv, session_id, dict)
        return sla_clock(clock)

    async def account(self, operator_id: str) -> OperatorAccount | None:
        if not is_token(operator_id):
            return None
        account, _ = await kv_get(self.b.accounts, operator_id, OperatorAccount)
        return account

    async def operator(self, operator_id: str) -> OperatorState:
        state, _ = await kv_get(self.b.operators, operator_id, OperatorState)
        return state or OperatorState(id=operator_id)

    async def session(self, session_id: str) -> Session | None:
        if not is_token(session_id):
            return None
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        return session

    async def history(self, session_id: str) -> list[HistoryEntry]:
        raw = await read_subject(self.js, subjects.STREAM_HIST, subjects.history(session_id))
        out: list[HistoryEntry] = []
        for _seq, data in raw:
            try:
                out.append(_history_decoder.decode(data))
            except msgspec.DecodeError:
                continue  # one bad entry must not hide the rest of the transcript
        return out

    async def marks(self, session_id: str) -> dict[str, dict[str, Any]]:
        """What the channel said about each outbound message of the session (delivery marks), the strongest per message."""
        raw = await read_subject(self.js, subjects.STREAM_MARK, subjects.mark(session_id))
        found: list[DeliveryMark] = []
        for _seq, data in raw:
            try:
                found.append(_mark_decoder.decode(data))
            except msgspec.DecodeError:
                continue
        return best_marks(found)

    async def templates(self, session: Session) -> list[MessageTemplate]:
        """The approved message templates declared for the session's channel account (on the line it feeds)."""
        line = await self.line(session.entry_line_id or session.line_id)
        for ch in line.channels if line is not None else []:
            if (ch.channel, ch.account) == (session.channel, session.account):
                return list(ch.templates)
        return []

    async def line(self, line_id: str) -> LineConfig | None:
        """A line's configuration, cached for LINE_NAME_TTL seconds."""
        cached = self._lines.get(line_id)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        line = None
        if line_id and is_token(line_id):
            line, _ = await kv_get(self.b.lines, line_key(line_id), LineConfig)
        self._lines[line_id] = (line, now + LINE_NAME_TTL)
        return line

    async def line_name(self, line_id: str) -> str:
        line = await self.line(line_id)
        return (line.name if line is not None else "") or line_id

    async def chat(self, session: Session) -> dict[str, Any]:
        """A session as the page shows it, with what the page needs of its line."""
        out: dict[str, Any] = msgspec.to_builtins(session)
        line = await self.line(session.line_id)
        out["line_name"] = (line.name if line is not None else "") or session.line_id
        # The no-answer timeout: the page counts an offer down from assigned_at.
        out["wait_seconds"] = line.queue.wait_seconds if line is not None else 0
        preview = self.preview(session.id) if self.preview is not None else None
        if preview is not None:
            out["preview"] = preview
        if session.status == "closed":
            out["outcome"] = await self.outcome(session)
        else:
            out["sla"] = await self.sla(session.id)
        if window.has_window(session.channel):
            # WhatsApp's 24 hours: outside them only an approved template reaches the client.
            closes = window.closes_at(session.channel, session.client_last_at)
            out["window"] = {
                "open": window.is_open(session.channel, session.client_last_at, utcnow()),
                "closes_at": closes.isoformat() if closes is not None and closes.year > 1970 else None,
            }
            out["templates"] = [
                {
                    "name": t.name,
                    "language": t.language,
                    "title": t.title or t.name,
                    "text": t.text,
                    "variables": t.variables or ["{{" + v + "}}" for v in templates.variables(t.text)],
                }
                for t in await self.templates(session)
            ]
        return out

    async def outcome(self, session: Session) -> str:
        """How a closed conversation ended, in words: "closed by Anna Petrova", "closed after no activity"."""
        if session.close_reason == "operator" and session.closed_by:
            acc = await self.account(session.closed_by)
            return f"closed by {acc.name if acc is not None else session.closed_by}"
        return CLOSE_REASONS.get(session.close_reason, session.close_reason or "closed")

    async def my_chats(self, operator_id: str, state: OperatorState | None = None) -> list[dict[str, Any]]:
        """The operator's open sessions and the offers made to them, oldest first."""
        state = state or await self.operator(operator_id)
        found = await asyncio.gather(*(self.session(sid) for sid in dict.fromkeys([*state.sessions, *state.offers])))
        mine = [s for s in found if s is not None and operator_id in holders_of(s)]
        mine.sort(key=lambda s: s.opened_at)
        # Side by side: each chat reads its SLA clock (and more); one after the other, a page opened on a busy
        # desk - after a desk replica was killed, every page of it at once - waited for the sum.
        return list(await asyncio.gather(*(self.chat(s) for s in mine)))

    async def snapshot(self, operator_id: str) -> dict[str, Any]:
        state = await self.operator(operator_id)
        return {
            "type": "snapshot",
            "operator": {"id": operator_id, "status": state.status},
            "chats": await self.my_chats(operator_id, state),
        }


# -- the client card and the client's earlier sessions ------------------------------------------

# The client's earlier sessions are found by scanning the newest events of
# OL_EVT (session_closed carries the client id). The scan is bounded: a client
# whose last visit is older than this many events ago shows no earlier sessions.
PREVIOUS_SCAN_EVENTS = 20_000
PREVIOUS_SHOWN = 10

_event_decoder = msgspec.json.Decoder(SessionEvent)


async def client_record(reader: Reader, session: Session) -> ClientRecord | None:
    record, _ = await kv_get(reader.b.clients, client_key(session.channel, session.account, session.chat_key), ClientRecord)
    return record


def client_addresses(profile_email: str, entries: list[HistoryEntry]) -> list[str]:
    """Every e-mail address the client's side wrote from: the profile's first, then each colleague who joined by replying."""
    seen: dict[str, str] = {}
    for addr in [profile_email, *(e.author_id for e in entries if e.direction == "in")]:
        if addr and "@" in addr:
            seen.setdefault(addr.lower(), addr)
    return list(seen.values())


async def previous_sessions(reader: Reader, client_ids: list[str], *, exclude: str = "") -> list[Session]:
    """The client's closed sessions, newest first, among the last PREVIOUS_SCAN_EVENTS events."""
    try:
        info = await reader.js.stream_info(subjects.STREAM_EVT)
    except NotFoundError:
        return []
    last = info.state.last_seq or 0
    start = max(1, last - PREVIOUS_SCAN_EVENTS + 1)
    rows = await read_subject(
        reader.js, subjects.STREAM_EVT, subjects.event("session_closed"), start_seq=start, limit=PREVIOUS_SCAN_EVENTS
    )
    found: list[str] = []
    for _seq, data in reversed(rows):
        try:
            event = _event_decoder.decode(data)
        except msgspec.DecodeError:
            continue
        if event.client_id in client_ids and event.session_id != exclude and event.session_id not in found:
            found.append(event.session_id)
        if len(found) >= PREVIOUS_SHOWN:
            break
    sessions = await asyncio.gather(*(reader.session(sid) for sid in found))
    return [s for s in sessions if s is not None]


async def holds_client(reader: Reader, operator_id: str, client_id: str) -> bool:
    """Whether the operator holds (or is offered) an open chat of this client now."""
    state = await reader.operator(operator_id)
    sessions = await asyncio.gather(*(reader.session(sid) for sid in dict.fromkeys([*state.sessions, *state.offers])))
    return any(s is not None and s.client_id == client_id and operator_id in holders_of(s) for s in sessions)
