"""Operators' status and presence: online drains their lines; away or offline hands their chats on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import msgspec

from openlines.bus import kv_get, kv_update
from openlines.envelopes import utcnow
from openlines.state import OperatorState, OperatorStatus, Session
from router.core import session as transition
from router.core import timing
from router.shell.answers import Answers
from router.shell.base import Part, Shared
from router.shell.offering import Offering
from router.timers import Timer, schedule

log = logging.getLogger("router.engine")


class Operators(Part):
    def __init__(self, shared: Shared, offering: Offering, answers: Answers) -> None:
        super().__init__(shared)
        self.offering = offering
        self.answers = answers

    async def set_status(self, operator_id: str, status: OperatorStatus, now: datetime | None = None) -> OperatorState:
        await self._account(operator_id)
        now = now or utcnow()

        def change(st: OperatorState | None) -> OperatorState | None:
            cur = st or OperatorState(id=operator_id)
            if st is not None and cur.status == status:
                return None
            return msgspec.structs.replace(cur, status=status, status_changed_at=now)

        state = await kv_update(self.b.operators, operator_id, OperatorState, change)
        assert state is not None
        await self.fx.event(f"status:{operator_id}:{now.timestamp()}", "operator_status", operator_id=operator_id, reason=status)
        if status == "online":
            for line in self.lines.lines_of(operator_id):
                await self.offering.drain(line, now)
        else:
            await self._hand_over(operator_id, state, now)
        final, _ = await kv_get(self.b.operators, operator_id, OperatorState)
        return final or state

    async def _hand_over(self, operator_id: str, state: OperatorState, now: datetime) -> None:
        """An absent operator keeps no unanswered chat (and, if the line says so, no open one)."""
        for sid in list(state.offers):
            offered, _ = await kv_get(self.b.sessions, sid, Session)
            if offered is not None and offered.status == "assigned" and operator_id in offered.offered_to:
                await self.answers.decline_offer(operator_id, offered, "operator away", now)
            else:
                await self._withdraw(operator_id, sid)
        for sid in list(state.sessions):
            session, _ = await kv_get(self.b.sessions, sid, Session)
            line = self.lines.lines.get(session.line_id) if session is not None else None
            policy = line.queue.reassign_on_status if line else "unanswered"
            action = transition.on_operator_away(session, operator_id, policy)
            if session is None or action == "keep":
                continue
            if action == "pass_on":
                await self.answers.pass_on(session, "operator away", now)
            else:
                await self._move_answered(session, "operator away", now)

    async def _move_answered(self, session: Session, reason: str, now: datetime) -> None:
        op_id = session.operator_id
        await self._settle_later(session.id, now)
        requeued = await kv_update(self.b.sessions, session.id, Session, lambda s: transition.moved_back(s, op_id))
        if requeued is None or requeued.status != "waiting":
            return
        await self._release(op_id, session.id)
        # The event names the operator it moved off (their pages drop it), like offer_declined.
        mid = f"moved:{session.id}:{session.assignments}"
        await self._trail(session, mid, "session_moved", f"Moved on: {reason}", reason=reason)
        line = self.lines.lines.get(requeued.line_id)
        if line is not None:
            await self._enqueue(line.id, requeued)
            await self.offering.drain(line, now)

    async def presence(self, operator_id: str, connected: bool, desk: str) -> None:
        """A desk replica says whether the operator has a page open on it; after the grace
        period with no page anywhere, the operator goes offline and their chats move on."""
        await self._account(operator_id)
        if not connected:
            await self.desk_gone(operator_id, desk)
            return

        def mark(st: OperatorState | None) -> OperatorState | None:
            cur = st or OperatorState(id=operator_id)
            if st is not None and desk in cur.desks:
                return None
            return msgspec.structs.replace(cur, desks=sorted({*cur.desks, desk}))

        await kv_update(self.b.operators, operator_id, OperatorState, mark)

    async def desk_gone(self, operator_id: str, desk: str, *, still_there: Callable[[], Awaitable[bool]] | None = None) -> bool:
        """The operator has no page on ``desk`` any more: it said so, or it stopped heartbeating.

        ``still_there`` is asked right before the change is written (again on every retry): a
        replica judged dead by a heartbeat read a moment ago may have renewed it and reported
        the page since. With no page left anywhere the grace period starts; its timer is set
        before the record, so a crash in between cannot leave the operator online for ever.
        Returns whether this call removed the desk.
        """
        now = utcnow().timestamp()
        armed = removed = False

        async def drop(st: OperatorState | None) -> OperatorState | None:
            nonlocal armed, removed
            removed = False
            if st is None or desk not in st.desks:
                return None
            if still_there is not None and await still_there():
                return None
            removed = True
            desks = [d for d in st.desks if d != desk]
            if desks:
                return msgspec.structs.replace(st, desks=desks)
            if st.status != "offline" and not armed:
                due = timing.presence_due(now, self.presence_grace(operator_id))
                await schedule(self.js, Timer(kind="presence", target=operator_id, due=due.due, token=due.token))
                armed = True
            return msgspec.structs.replace(st, desks=[], disconnected_at=now)

        await kv_update(self.b.operators, operator_id, OperatorState, drop)
        return removed

    def presence_grace(self, operator_id: str) -> float:
        """Seconds an operator with no desk page may stay as they are: the shortest grace of their lines."""
        return timing.presence_grace(self.lines.lines_of(operator_id))
