"""A chat changing hands on purpose: transferred to an operator or a line, or intercepted by a supervisor."""

from __future__ import annotations

from datetime import datetime

from openlines.bus import kv_get, kv_update
from openlines.envelopes import utcnow
from openlines.lines import QueueConfig
from openlines.roles import is_supervisor
from openlines.state import OperatorAccount, OperatorState, Session
from router.core import capacity
from router.core import session as transition
from router.shell.answers import Answers
from router.shell.base import Part, Refused, Shared
from router.shell.capacity import Capacity
from router.shell.offering import Offering

MAX_COMMENT = 1000


class Transfers(Part):
    def __init__(self, shared: Shared, cap: Capacity, offering: Offering, answers: Answers) -> None:
        super().__init__(shared)
        self.cap = cap
        self.offering = offering
        self.answers = answers

    async def transfer(self, operator_id: str, session_id: str, to_operator: str, to_line: str, comment: str = "") -> Session:
        acc = await self._account(operator_id)
        comment = " ".join(comment.split())
        if len(comment) > MAX_COMMENT:
            raise Refused("invalid", f"a transfer comment is at most {MAX_COMMENT} characters")
        said = f": “{comment}”" if comment else ""  # for whoever gets the chat; the client never sees it
        now = utcnow()
        session = await self.answers.own_session(operator_id, session_id, now)
        if bool(to_operator) == bool(to_line):
            raise Refused("invalid", "give exactly one of to_operator or to_line")
        if to_operator:
            return await self._to_operator(acc, session, to_operator, now, said)
        target = self.lines.lines.get(to_line)
        if target is None:
            raise Refused("not_found", f"line {to_line!r} does not exist")
        await self._settle_later(session_id, now)
        moved = await kv_update(self.b.sessions, session_id, Session, lambda s: transition.moved_to_line(s, operator_id, to_line))
        if moved is None or moved.line_id != to_line or moved.status != "waiting":
            raise Refused("conflict", "the chat changed meanwhile; reload it")
        await self._release(operator_id, session_id)
        await self._trail(
            moved,
            f"transferred-line:{session_id}:{session.assignments}",
            "session_transferred",
            f"{acc.name} transferred the chat to {target.name}{said}",
            reason=f"line {to_line}",
        )
        await self._enqueue(target.id, moved)
        await self.offering.drain(target, now)
        final, _ = await kv_get(self.b.sessions, session_id, Session)
        return final or moved

    async def _to_operator(self, acc: OperatorAccount, session: Session, to_operator: str, now: datetime, said: str) -> Session:
        if to_operator == acc.id:
            raise Refused("invalid", "the chat is already yours")
        target = await self._account(to_operator)
        line = self.lines.lines.get(session.line_id)
        queue = line.queue if line else QueueConfig()
        st, _ = await kv_get(self.b.operators, to_operator, OperatorState)
        if st is None or st.status != "online":
            raise Refused("conflict", f"{target.name} is not online")
        if not await self.cap.claim(to_operator, session.id, queue, now):
            raise Refused("conflict", f"{target.name} has no room for another chat")
        from_status = session.status
        await self._settle_later(session.id, now)
        if await kv_update(self.b.sessions, session.id, Session, lambda s: transition.reoffered(s, acc.id, from_status)) is None:
            await self._release(to_operator, session.id)
            raise Refused("conflict", "the chat changed meanwhile; reload it")
        await self._release(acc.id, session.id)

        async def transferred(given: Session) -> None:  # in the transcript before "Offered to ..."
            await self._trail(
                given,
                f"transferred-op:{session.id}:{given.assignments}",
                "session_transferred",
                f"{acc.name} transferred the chat to {target.name}{said}",
                reason=f"operator {to_operator}",
            )

        given = await self.offering.give(
            session.id,
            to_operator,
            now,
            from_status="waiting",
            assignments=session.assignments,
            wait_seconds=queue.wait_seconds,
            cause=transferred,
        )
        if given is None:
            await self._release(to_operator, session.id)
            raise Refused("conflict", "the chat changed meanwhile; reload it")
        return given

    async def intercept(self, operator_id: str, session_id: str) -> Session:
        """A supervisor takes a chat over, whoever holds it or is offered it; capacity limits do not apply."""
        acc = await self._account(operator_id)
        if not is_supervisor(acc.roles):
            raise Refused("forbidden", f"{acc.name} is not a supervisor: only supervisors may intercept chats")
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        if not session.is_open:
            raise Refused("conflict", f"session {session_id!r} is closed")
        if session.operator_id == operator_id:
            return session
        now = utcnow()
        previous, offered = session.operator_id, list(session.offered_to)
        taken = await kv_update(self.b.sessions, session_id, Session, lambda s: transition.intercepted(s, operator_id, now))
        if taken is None or taken.operator_id != operator_id:
            raise Refused("conflict", "the chat changed meanwhile; reload it")
        await kv_update(
            self.b.operators,
            operator_id,
            OperatorState,
            lambda st: capacity.held_answered(st or OperatorState(id=operator_id), session_id),
        )
        for op in {previous, *offered} - {"", operator_id}:
            await self._release(op, session_id)
        await self._dequeue(taken.line_id, session_id)
        tid = f"intercepted:{session_id}:{taken.assignments}"
        await self._trail(taken, tid, "session_transferred", f"Taken over by {acc.name}", reason=f"intercepted by {operator_id}")
        if taken.answered_at == now:
            # Nobody had answered it: the supervisor's take-over is its answer, counted as such everywhere.
            aid = f"answered:{session_id}:{taken.assignments}"
            await self._trail(taken, aid, "session_answered", f"Answered by {acc.name} (taken over)", reason="intercepted")
        return taken
