"""Closing a chat, and everything a close entails (releases, goodbye, rating request, event)."""

from __future__ import annotations

from datetime import datetime

from openlines.bus import kv_get, kv_update
from openlines.crashpoints import crash_point
from openlines.envelopes import rating_request_id
from openlines.state import ClientRecord, Session, client_key
from router.core import autoreply, client
from router.core import session as transition
from router.shell.base import Part, Shared
from router.shell.offering import Offering


class Closing(Part):
    def __init__(self, shared: Shared, offering: Offering) -> None:
        super().__init__(shared)
        self.offering = offering

    async def close(self, session: Session, now: datetime, *, closed_by: str, reason: str) -> Session:
        """Close the chat, then do what a close entails (see ``finish``).

        A close is many writes; the settle timer finishes it if this process
        dies (or NATS goes away) half way: no client is left pointing at a
        closed chat, no operator holding it, no CRM never told.
        """
        await self._settle_later(session.id, now)
        closed = await kv_update(
            self.b.sessions, session.id, Session, lambda s: transition.closed(s, now, closed_by=closed_by, reason=reason)
        )
        if closed is None or closed.close_finished:
            return closed or session
        crash_point("router.close.recorded")
        return await self.finish(closed, now)

    async def repeated(self, operator_id: str, session_id: str, reason: str, now: datetime) -> Session | None:
        """The chat when this operator already closed it for ``reason`` - a close asked again, answered as done
        (and finished, if the first ask was cut short: every step of ``finish`` is idempotent) - else None."""
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None or not transition.closed_already(session, operator_id, reason):
            return None
        return session if session.close_finished else await self.finish(session, now)

    async def finish(self, closed: Session, now: datetime) -> Session:
        """Everything that follows a close; each step is idempotent, so a retry completes a close cut short."""
        closed_at = closed.closed_at or now
        await self._release(closed.operator_id, closed.id)
        for op in closed.offered_to:
            await self._withdraw(op, closed.id)
        await self._forget_open(closed)
        await self._dequeue(closed.line_id, closed.id)
        line = self.lines.lines.get(closed.line_id)
        if line is not None:
            goodbye, rating, awaited = autoreply.on_close(line, closed)
            await self._auto(closed, f"closing:{closed.id}", goodbye, closed_at)
            if awaited:
                await self._auto(closed, rating_request_id(closed.id), rating, closed_at)
                await self._await_rating(closed, now)
        told = transition.close_told(closed)
        # The event keeps the login (machines read it); the transcript line names the person.
        reason = closed.close_reason
        text = (
            f"Closed by {await self._name(closed.closed_by)}" if reason == "operator" and closed.closed_by else told.capitalize()
        )
        await self._trail(closed, f"closed:{closed.id}", "session_closed", text, reason=told)
        finished = await kv_update(self.b.sessions, closed.id, Session, transition.close_finished)
        if line is not None:
            await self.offering.drain(line, now)
        return finished or closed

    async def _await_rating(self, session: Session, now: datetime) -> None:
        """The client's next message, if it is a mark 1-5 within a day, rates this session."""
        key = client_key(session.channel, session.account, session.chat_key)
        await kv_update(self.b.clients, key, ClientRecord, lambda c: client.awaiting_rating(c, session.id, now.timestamp()))

    async def _forget_open(self, session: Session) -> None:
        entry = session.entry_line_id or session.line_id
        key = client_key(session.channel, session.account, session.chat_key)
        await kv_update(self.b.clients, key, ClientRecord, lambda c: client.forgotten(c, entry, session.id))
