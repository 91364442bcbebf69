"""Timers firing: an offer's no-answer time up, an idle chat, a change to settle, a line opening, a desk gone.

Whether a fired timer still applies is ``router.core.timing``'s to say.
"""

from __future__ import annotations

import logging
from datetime import datetime

from openlines.bus import kv_get
from openlines.envelopes import utcnow
from openlines.state import OperatorState, Session
from router.core import timing
from router.shell.answers import Answers
from router.shell.base import Part, Shared
from router.shell.closing import Closing
from router.shell.offering import Offering
from router.shell.operators import Operators
from router.timers import NotDue, Timer

log = logging.getLogger("router.engine")


class Firing(Part):
    def __init__(self, shared: Shared, offering: Offering, answers: Answers, closing: Closing, operators: Operators) -> None:
        super().__init__(shared)
        self.offering = offering
        self.answers = answers
        self.closing = closing
        self.ops = operators

    async def fire(self, timer: Timer) -> None:
        now = utcnow()
        if timer.kind == "offer":
            session, _ = await kv_get(self.b.sessions, timer.target, Session)
            line = self.lines.lines.get(session.line_id) if session is not None else None
            verdict = timing.offer_fired(session, timer.token, line, now.timestamp())
            if verdict.action == "early":
                raise NotDue(verdict.delay)
            if verdict.action == "pass_on" and session is not None:
                if verdict.reannounce:
                    await self.offering.announce(session, [session.operator_id] if session.operator_id else session.offered_to)
                await self.answers.pass_on(session, "no answer", now)
        elif timer.kind == "idle":
            session, _ = await kv_get(self.b.sessions, timer.target, Session)
            if session is not None and timing.idle_fired(session, timer.token):
                await self.closing.close(session, now, closed_by="auto", reason="auto_close")
        elif timer.kind == "settle":
            await self.settle(timer.target, now)
        elif timer.kind == "opening":
            line = self.lines.lines.get(timer.target)
            if line is not None:
                await self.offering.drain(line, now)
        elif timer.kind == "presence":
            st, _ = await kv_get(self.b.operators, timer.target, OperatorState)
            if timing.presence_fired(st, timer.token):
                log.info("operator's desk gone past the grace period: offline", extra={"operator": timer.target})
                await self.ops.set_status(timer.target, "offline", now)

    async def settle(self, session_id: str, now: datetime) -> None:
        """Make what surrounds a session agree with its record: a closed one is finished, a waiting one is queued."""
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            return
        if session.status == "closed" and not session.close_finished:
            log.warning("finishing a close that was cut short", extra={"session": session.id})
            await self.closing.finish(session, now)
            return
        line = self.lines.lines.get(session.line_id)
        if session.status != "waiting" or session.held or line is None:
            return
        if (line.id, session.id) not in self.waiting:
            log.warning("queueing a waiting chat whose move was cut short", extra={"session": session.id})
            await self._enqueue(line.id, session)
        await self.offering.drain(line, now)
