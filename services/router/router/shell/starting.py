"""A new session's start: its opening event and auto-reply, then held, offered at once, or queued.

What each gets is decided by ``router.core.opening``; this part writes the trail and the records around it.
"""

from __future__ import annotations

from datetime import datetime

from openlines.bus import kv_get, kv_update
from openlines.lines import LineConfig
from openlines.state import Session
from router.core import autoreply, opening, timing
from router.core import session as transition
from router.shell.base import WAITING_NOTE, Part, Shared
from router.shell.kv import Known
from router.shell.offering import Offering
from router.timers import Timer, schedule


class Starting(Part):
    def __init__(self, shared: Shared, offering: Offering) -> None:
        super().__init__(shared)
        self.offering = offering

    async def start(self, session: Session, first_contact: bool, now: datetime) -> tuple[LineConfig, opening.Opening] | None:
        """What a new session gets first: the opening event and the right auto-reply (then ``place``)."""
        line = self.lines.lines.get(session.line_id)
        if line is None:
            return None
        entry = self.lines.lines.get(session.entry_line_id, line)
        decided = opening.open_session(line, entry, now, first_contact=first_contact, client_name=session.client_name)
        await self._trail(session, f"opened:{session.id}", "session_opened", decided.note)
        if decided.reply.kind:
            await self._auto(session, f"{decided.reply.kind}:{session.id}", decided.reply.text, now)
        return line, decided

    async def place(
        self, line: LineConfig, session: Session, decided: opening.Opening, now: datetime, *, known: Known[Session] | None
    ) -> None:
        """A new session is held, offered at once, or queued and offered when its turn comes.

        ``known``: the session's record and revision if this trigger just wrote it (saves reading it again).
        """
        if decided.held:
            session = await self._hold(line, session, now)
            known = None
        if session.status == "waiting":
            if self.offering.may_offer_at_once(line, now):
                current, rev = known if known is not None else await kv_get(self.b.sessions, session.id, Session)
                if current is None or current.status != "waiting":
                    return  # closed or taken meanwhile
                offered_now, wrote = await self.offering.offer_at_once(line, current, rev, now)
                if offered_now is not None:
                    return  # offered at once: it never waited
                known = None if wrote else (current, rev)
            await self._enqueue(line.id, session)
            hint = {session.id: known} if known is not None else {}
            offered = await self.offering.drain(line, now, after_queueing=True, known=hint)
            if session.id in offered:
                return  # offered at once: no longer waiting
            after, _ = await kv_get(self.b.sessions, session.id, Session)
            if after is not None and after.status == "waiting":
                await self._trail(after, f"waiting:{session.id}:{after.assignments}", "session_waiting", WAITING_NOTE)
                await self._tell_position(line, after, now)

    async def _hold(self, line: LineConfig, session: Session, now: datetime) -> Session:
        held = await kv_update(self.b.sessions, session.id, Session, transition.held)
        session = held or session
        await self._trail(session, f"held:{session.id}", "session_held", "Outside business hours: held until the line opens")
        due = timing.opening_due(line, now)
        if due is not None:
            await schedule(self.js, Timer(kind="opening", target=line.id, due=due.due, token=due.token))
        return session

    async def _tell_position(self, line: LineConfig, session: Session, now: datetime) -> None:
        if not line.queue.tell_position:
            return
        text = autoreply.position_reply(line, session.client_name, self.waiting.position(line.id, session.id))
        await self._auto(session, f"position:{session.id}:{session.assignments}", text, now)
