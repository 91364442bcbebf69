"""An operator's answer to an offer: taking a chat offered to all, letting an offer pass, declining one of
several; and the check that a chat is the operator's own before anything is done to it.

Who gets the chat next is ``router.shell.offering``'s (with ``router.core.offer``); the transitions are
``router.core.session``'s.
"""

from __future__ import annotations

from datetime import datetime

from openlines.bus import kv_get, kv_update
from openlines.lines import QueueConfig
from openlines.state import Session
from router.core import session as transition
from router.shell.base import WAITING_NOTE, Part, Refused, Shared
from router.shell.capacity import Capacity
from router.shell.offering import Offering


class Answers(Part):
    def __init__(self, shared: Shared, offering: Offering, cap: Capacity) -> None:
        super().__init__(shared)
        self.offering = offering
        self.cap = cap

    async def own_session(self, operator_id: str, session_id: str, now: datetime, *, take: bool = False) -> Session:
        """The operator's open chat (``take``: or one offered to all that they accept now), else Refused."""
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        if take and session.status == "assigned" and not session.operator_id and operator_id in session.offered_to:
            return await self._take(operator_id, session, now)
        if session.operator_id != operator_id:
            raise Refused("forbidden", f"session {session_id!r} is not assigned to {operator_id!r}")
        if not session.is_open:
            raise Refused("conflict", f"session {session_id!r} is closed")
        return session

    async def _take(self, op_id: str, session: Session, now: datetime) -> Session:
        """The first operator to accept an offer made to all takes the chat; the others' offers are withdrawn."""
        line = self.lines.lines.get(session.line_id)
        queue = line.queue if line else QueueConfig()
        if not await self.cap.claim(op_id, session.id, queue, now, any_status=True):
            raise Refused("conflict", "you have no room for another chat; close one first")
        assignments = session.assignments
        updated = await kv_update(
            self.b.sessions, session.id, Session, lambda s: transition.taken(s, op_id, assignments=assignments)
        )
        if updated is None or updated.operator_id != op_id:
            await self._release(op_id, session.id)
            raise Refused("conflict", "another operator has taken this chat")
        for other in session.offered_to:
            await self._withdraw(other, session.id)
        tid = f"taken:{session.id}:{assignments}"
        await self._trail(updated, tid, "session_assigned", f"Taken by {await self._name(op_id)}", reason="accepted first")
        return updated

    async def pass_on(self, session: Session, reason: str, now: datetime) -> None:
        """The operator let an offer pass: give it to the next one (never straight back while others are free)."""
        op_id = session.operator_id
        passing = [op_id] if op_id else list(session.offered_to)
        assignments = session.assignments
        await self._settle_later(session.id, now)
        requeued = await kv_update(
            self.b.sessions, session.id, Session, lambda s: transition.passed_back(s, passing, assignments=assignments)
        )
        if requeued is None or requeued.status != "waiting" or requeued.assignments != assignments:
            return
        for op in passing:
            await self._release(op, session.id)
        did = f"declined:{session.id}:{assignments}"
        await self._trail(session, did, "offer_declined", f"Passed on: {reason}", reason=reason)
        line = self.lines.lines.get(requeued.line_id)
        if line is None:
            return
        await self._enqueue(line.id, requeued)
        await self.offering.drain(line, now)
        after, _ = await kv_get(self.b.sessions, session.id, Session)
        if after is not None and after.status == "waiting":
            wid = f"waiting:{session.id}:{after.assignments}:{op_id}"
            await self._trail(after, wid, "session_waiting", WAITING_NOTE, reason=reason)

    async def decline_offer(self, operator_id: str, session: Session, reason: str, now: datetime) -> None:
        """One of several operators declines an offer made to all; when nobody is left, it passes on."""
        assignments = session.assignments
        updated = await kv_update(
            self.b.sessions, session.id, Session, lambda s: transition.declined(s, operator_id, assignments=assignments)
        )
        await self._withdraw(operator_id, session.id)
        if updated is not None and transition.nobody_left(updated):
            await self.pass_on(updated, reason, now)
