"""What every part of the router's shell shares: the buckets, the caches, and the
small effects all of them apply (a trail entry, an auto-reply, a timer, a release).

All state lives in KV and is changed by compare-and-set, so the same work can
be redone after a crash (inbound redelivery, command retry, timer refire)
without doubling anything: session ids and message ids are derived from the
triggering id, and every publish carries its id as Nats-Msg-Id.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import datetime

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from openlines import window
from openlines.bus import Buckets, kv_get, kv_update
from openlines.envelopes import HistoryEntry, Outbound, utcnow
from openlines.state import OperatorAccount, OperatorState, Session
from router.core import capacity, flood, timing
from router.core import session as transition
from router.effects import TOGETHER_TIMEOUT, Effects
from router.lines_cache import LinesCache
from router.operators_cache import OperatorsCache
from router.timers import Timer, schedule
from router.waiting import Waiting

SETTLE_AFTER = 10.0  # seconds after which the "settle" timer completes a change cut short by a crash
WAITING_NOTE = "Waiting for an operator"
NAME_FRESH = 60.0  # seconds an operator's name read for a transcript line is used before it is read again


class Refused(Exception):
    """A command the line rules do not allow; carries the machine code for the answer."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _short_hash(*parts: str) -> str:
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=10).hexdigest()


def session_id_for(inbound_id: str, line_id: str) -> str:
    """The session a first message opens: derived from that message, so a redelivery finds it again."""
    return "s" + _short_hash(line_id, inbound_id)


def client_id_for(channel: str, account: str, chat_id: str) -> str:
    return "c" + _short_hash(channel, account, chat_id)


class Shared:
    """The router's connections and in-memory copies, one set per process, shared by every part."""

    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        buckets: Buckets,
        lines: LinesCache,
        operators: OperatorsCache | None,
        waiting: Waiting,
        flood_rule: flood.FloodRule | None = None,
        request_timeout: float = TOGETHER_TIMEOUT,
    ) -> None:
        self.js = js
        self.nc: NATS = nc
        self.b = buckets
        self.lines = lines
        self.operators = operators  # a watch-fed copy of ol-operators; None = read KV for every decision
        self.waiting = waiting  # every line's waiting queue (ol-waiting, one key per chat)
        self.flood = flood_rule or flood.FloodRule(limit=0, window=60.0, channels=frozenset())
        self.fx = Effects(js, nc, request_timeout)
        self.names: dict[str, tuple[str, float]] = {}  # operator -> (name, monotonic time read), see Part._name


class Part:
    """One part of the shell: applies what the core decides, using the shared connections."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.js = shared.js
        self.nc = shared.nc
        self.b = shared.b
        self.lines = shared.lines
        self.operators = shared.operators
        self.waiting = shared.waiting
        self.flood = shared.flood
        self.fx = shared.fx

    # ------------------------------------------------------------ the trail

    async def _note(self, session: Session, note_id: str, text: str) -> None:
        """A line in the transcript for a transition (who got the chat, why it moved)."""
        await self.fx.history(
            HistoryEntry(id=f"note:{note_id}", session_id=session.id, direction="system", text=text, at=utcnow())
        )

    async def _trail(self, session: Session, trail_id: str, kind: str, text: str, **fields: str) -> None:
        """A state change of a session: its event and its transcript line, under one id.

        Every change of a session goes through here, so the event stream (statistics, CRM,
        live pages) and the transcript (what people read) tell the same story: the event
        ``<id>`` has the transcript line ``note:<id>`` (docs/operations.md, "The trail").
        """
        await self.fx.event(trail_id, kind, session, **fields)
        await self._note(session, trail_id, text)

    async def _auto(self, session: Session, out_id: str, text: str, now: datetime) -> None:
        if not text or session.no_auto_reply:
            return  # nothing to say, or a robot / mailing list / loop that must get no automatic answer
        if not window.is_open(session.channel, session.client_last_at, now):
            # WhatsApp would refuse it (131047): a free-form message after the client's 24 hours.
            await self._note(session, f"nowindow:{out_id}", "Auto-reply not sent: the client's 24-hour window is closed")
            return
        await self.fx.send(
            session,
            Outbound(
                id=out_id,
                session_id=session.id,
                channel=session.channel,
                account=session.account,
                chat_id=session.chat_id,
                text=text,
                auto=True,
                created_at=now,
            ),
        )

    # ------------------------------------------------------------ accounts

    async def _name(self, op_id: str) -> str:
        """The operator's name for a transcript line ("Offered to Anna"), read at most every NAME_FRESH seconds.

        Every offer names its operator: reading the account each time was one round trip in
        six on the common path. Only the text uses it; whether someone may act is decided
        on the account read fresh (``_account``), which also refreshes the name.
        """
        known = self.shared.names.get(op_id)
        if known is not None and time.monotonic() - known[1] < NAME_FRESH:
            return known[0]
        acc, _ = await kv_get(self.b.accounts, op_id, OperatorAccount)
        name = acc.name if acc else op_id
        self.shared.names[op_id] = (name, time.monotonic())
        return name

    async def _account(self, operator_id: str) -> OperatorAccount:
        acc, _ = await kv_get(self.b.accounts, operator_id, OperatorAccount)
        if acc is not None:
            self.shared.names[operator_id] = (acc.name, time.monotonic())
        if acc is None:
            raise Refused("not_found", f"operator {operator_id!r} does not exist")
        if "openlines" not in acc.permissions:
            raise Refused("forbidden", f"operator {operator_id!r} lacks the 'openlines' permission")
        return acc

    # ------------------------------------------------------------ timers

    async def _arm_idle(self, session: Session) -> None:
        line = self.lines.lines.get(session.line_id)
        due = timing.idle_due(line, session) if line is not None else None
        if due is not None:
            await schedule(self.js, Timer(kind="idle", target=session.id, due=due.due, token=due.token))

    async def _arm_offer(self, sid: str, assignments: int, now: datetime, wait_seconds: float) -> None:
        """The no-answer timer of a session's offer number ``assignments`` (stale, and harmless, if the offer is not made)."""
        due = timing.offer_due(assignments, now.timestamp(), wait_seconds)
        await schedule(self.js, Timer(kind="offer", target=sid, due=due.due, token=due.token))

    async def _settle_later(self, session_id: str, now: datetime) -> None:
        """Set before a change that takes several writes (close, pass on, move, transfer).

        If this process dies or NATS goes away half way, the timer fires on
        another replica and ``settle`` completes what the session's own record
        says should have followed. Harmless when the change went through.
        """
        due = now.timestamp() + SETTLE_AFTER
        await schedule(self.js, Timer(kind="settle", target=session_id, due=due, token=secrets.token_hex(6)))

    async def _writable(self, operator_id: str, acc: OperatorAccount, session_id: str, doing: str) -> Session:
        """The conversation, when this operator may write in it (a tag, a note, its client's details); else Refused.

        ``doing`` ends the refusal: "<name> may not <doing>: it is not on one of their lines".
        """
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        my_lines = {line.id for line in self.lines.lines_of(operator_id)}
        if not transition.may_annotate(session, operator_id, list(acc.roles), my_lines):
            raise Refused("forbidden", f"{acc.name} may not {doing}: it is not on one of their lines")
        return session

    # ------------------------------------------------------------ operators and queues

    async def _release(self, op_id: str, sid: str) -> None:
        if op_id:
            await kv_update(self.b.operators, op_id, OperatorState, lambda st: capacity.released(st, sid) if st else None)

    async def _withdraw(self, op_id: str, sid: str) -> None:
        await kv_update(self.b.operators, op_id, OperatorState, lambda st: capacity.without_offer(st, sid) if st else None)

    async def _enqueue(self, line_id: str, session: Session) -> None:
        """Into the line's queue, at the place it first started waiting."""
        await self.waiting.add(
            line_id,
            session.id,
            session.opened_at.timestamp(),
            channel=session.channel,
            account=session.account,
            chat_id=session.chat_id,
        )

    async def _dequeue(self, line_id: str, sid: str) -> None:
        await self.waiting.remove(line_id, sid)
