"""Offering waiting chats: the drain loop, an offer recorded and announced, an offer let pass.

Whom a chat goes to is decided by ``router.core.offer`` (with the line's
strategy); this part reads the state it needs, claims capacity by
compare-and-set and writes the session's transition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from openlines import subjects
from openlines.bus import kv_get, kv_update
from openlines.crashpoints import crash_point
from openlines.envelopes import utcnow
from openlines.lines import LineConfig
from openlines.state import OperatorState, Session
from router.core import capacity, distribution, offer, opening
from router.core import session as transition
from router.shell.base import Part, Shared
from router.shell.capacity import Capacity
from router.shell.kv import Known, cas

log = logging.getLogger("router.engine")

CRM_LOOKUP_TIMEOUT = 0.5  # routing never waits longer than this on the CRM
DECIDE_ATTEMPTS = 10


@dataclass(slots=True)
class AtOnce:
    """An offer tried on the watch-fed copy alone; ``wrote``: an operator or the session was written to."""

    wrote: bool = False


class Offering(Part):
    def __init__(self, shared: Shared, cap: Capacity) -> None:
        super().__init__(shared)
        self.cap = cap

    async def drain(
        self,
        line: LineConfig,
        now: datetime | None = None,
        *,
        after_queueing: bool = False,
        known: dict[str, Known[Session]] | None = None,
    ) -> dict[str, Session]:
        """Offer waiting chats of a line, oldest first, while operators have room; returns the chats offered.

        ``after_queueing``: the drain follows this replica queueing a new chat, and no
        operator freed room meanwhile, so a chat another replica queued a moment ago
        is that replica's to offer (it drained after queueing it); no need to catch up.
        ``known``: sessions this trigger just wrote, with their revisions (not read again).
        """
        now = now or utcnow()
        known = dict(known or {})
        offered: dict[str, Session] = {}
        if opening.holds(line, now):
            return offered  # held chats wait for the opening timer
        while True:
            head = self.waiting.head(line.id)
            if head is None:
                if after_queueing:
                    return offered
                # Before saying nobody waits: a chat another replica queued a moment ago must be seen.
                await self.waiting.sync()
                head = self.waiting.head(line.id)
                if head is None:
                    return offered
            hint = known.pop(head.session_id, None)
            session, rev = hint if hint is not None else await kv_get(self.b.sessions, head.session_id, Session)
            if session is None or session.status != "waiting" or session.line_id != line.id:
                await self._dequeue(line.id, head.session_id)
                continue
            assigned = await self._assign(line, session, rev, now)
            if assigned is None:
                return offered
            offered[assigned.id] = assigned
            await self._dequeue(line.id, head.session_id)

    async def _responsible(self, session: Session) -> str | None:
        """The client's responsible manager from crm-sync, or None (quickly) when unknown or unreachable."""
        payload = msgspec.json.encode(
            {
                "client_id": session.client_id,
                "channel": session.channel,
                "account": session.account,
                "chat_id": session.chat_id,
                "session_id": session.id,  # what the client wrote in it (a phone, an e-mail) identifies them too
            }
        )
        try:
            reply = await self.nc.request(subjects.CRM_RESPONSIBLE, payload, timeout=CRM_LOOKUP_TIMEOUT)
            answer = msgspec.json.decode(reply.data)
        except (NoRespondersError, NatsTimeout, msgspec.DecodeError):
            return None
        op = answer.get("operator_id") if isinstance(answer, dict) else None
        return op if isinstance(op, str) and op else None

    def may_offer_at_once(self, line: LineConfig, now: datetime) -> bool:
        """Whether a new chat of the line may skip the queue: the line takes chats now and nobody waits (FIFO)."""
        return not opening.holds(line, now) and not self.waiting.count(line.id)

    async def offer_at_once(
        self, line: LineConfig, session: Session, rev: int | None, now: datetime
    ) -> tuple[Session | None, bool]:
        """A new chat nobody waits before: offered without passing through the queue, when someone is free.

        Queueing it only to take it out again is two writes (the put and the purge) for
        nothing. The decision is made on the watch-fed copy of the operators alone: if it
        shows nobody free, the chat is queued as usual, and the drain that follows looks
        at the live values (an operator freed a moment ago then sees the chat queued, or
        the drain sees them free). Returns the session offered (None: queue it) and
        whether anything was written (then the caller's copy of the session is old).
        A crash before the offer is recorded leaves the chat waiting in no queue; the
        message that opened it is redelivered and finishes the start
        (``router.core.client.resumes``).
        """
        if not self.may_offer_at_once(line, now):
            return None, False
        attempt = AtOnce()
        offered = await self._assign(line, session, rev, now, at_once=attempt)
        return offered, attempt.wrote

    async def _assign(
        self, line: LineConfig, session: Session, rev: int | None, now: datetime, *, at_once: AtOnce | None = None
    ) -> Session | None:
        """Offer a waiting chat to whom the line's mode picks, or None if nobody can take it now.

        ``at_once``: decide on the watch-fed copy only (None when it shows nobody free).
        """
        asks = distribution.asks_responsible(line.queue)
        if asks and at_once is not None and not offer.decide(line.queue, await self.cap.views(line)).operators:
            return None  # nobody free on the copy: queued without asking the CRM (the drain asks)
        preferred = await self._responsible(session) if asks else None
        live = False
        armed = False  # the no-answer timer of this offer (the same id each time: armed once)
        for _ in range(DECIDE_ATTEMPTS):
            views = await self.cap.views(line, live=live)
            choice = offer.decide(line.queue, views, declined_by=session.declined_by, preferred=preferred)
            if choice.operators and not choice.to_all and preferred is None and self.cap.claiming(choice.operators[0]):
                # Another chat of this replica is claiming them right now (chats are decided side by side,
                # decision 029): the next one in line, if anyone else is free, rather than wait to lose.
                busy = frozenset(o for o in line.queue.operators if self.cap.claiming(o))
                other = offer.decide(line.queue, views, declined_by=session.declined_by, exclude=busy)
                choice = other if other.operators else choice
            if at_once is not None and choice.operators:
                at_once.wrote = True
            if not choice.operators:
                if at_once is not None:
                    return None
                if not live:
                    live = True  # the copy may be a moment behind: decide once more on the live values
                    continue
                if await self.cap.prune_full(line, now):
                    continue  # someone only looked full: decide again
                return None
            if choice.to_all:
                return await self._offer_all(line, session, choice.operators, now, known=(session, rev))
            op_id = choice.operators[0]
            seen = self.operators.entry(op_id) if self.operators is not None and not live else None
            # The offer's no-answer timer goes with the claim (one round trip): armed for an
            # offer that is then not made, it is stale and does nothing when it fires.
            arm = not armed
            claimed, *_ = await asyncio.gather(
                self.cap.claim(op_id, session.id, line.queue, now, decided_on=seen[1] if seen is not None else None),
                *([self._arm_offer(session.id, session.assignments + 1, now, line.queue.wait_seconds)] if arm else []),
            )
            armed = True
            if not claimed:
                continue  # their state changed under us: decide again on fresh state
            crash_point("router.offer.claimed")
            updated = await self.give(
                session.id,
                op_id,
                now,
                from_status="waiting",
                assignments=session.assignments,
                wait_seconds=line.queue.wait_seconds,
                known=(session, rev),
                armed=True,
            )
            if updated is None:
                await self._release(op_id, session.id)  # closed or taken meanwhile
                return None
            return updated
        return None

    async def give(
        self,
        sid: str,
        op_id: str,
        now: datetime,
        *,
        from_status: str,
        assignments: int,
        wait_seconds: float,
        cause: Callable[[Session], Awaitable[None]] | None = None,
        known: Known[Session] | None = None,
        armed: bool = False,
    ) -> Session | None:
        """Record the offer on the session (its no-answer timer set first) and announce it.

        ``assignments``: the session's count as the caller read it; the offer makes it one more.
        ``cause``: writes what led to the offer (a transfer) into the trail before the offer's line.
        ``known``: the session as the caller read it, with its revision (the first try writes on it).
        ``armed``: the caller has armed the timer of offer ``assignments + 1`` at ``now``.
        """
        expected = assignments + 1
        for _ in range(DECIDE_ATTEMPTS):
            # The timer before the record: a crash right after the record must not leave the
            # chat offered for ever to an operator who never answers (nothing else would
            # notice: the message that opened it, redelivered, finds it no longer waiting).
            if not armed:
                await self._arm_offer(sid, expected, now, wait_seconds)
            armed = False
            updated, _ = await cas(
                self.b.sessions,
                sid,
                Session,
                lambda s, exp=expected: transition.given(s, op_id, now, from_status=from_status, expected=exp),
                known=known,
            )
            known = None
            if updated is not None and updated.status == from_status and updated.assignments + 1 != expected:
                expected = updated.assignments + 1  # offered and passed on meanwhile elsewhere: arm for the count now
                continue
            if updated is None or updated.operator_id != op_id or updated.status != "assigned" or updated.assignments != expected:
                return None
            crash_point("router.offer.recorded")
            async with self.fx.together():
                if cause is not None:
                    await cause(updated)
                await self.announce(updated, [op_id])
            log.debug("chat offered", extra={"session": sid, "line": updated.line_id, "operator": op_id})
            return updated
        return None

    async def announce(self, session: Session, ops: list[str]) -> None:
        """The offer's event and transcript line (deterministic ids: announcing it again writes nothing twice)."""
        key = f"assigned:{session.id}:{session.assignments}"
        names = [await self._name(op) for op in ops]
        extra = {"reason": "offered to all"} if session.offered_to else {}
        await self._trail(session, key, "session_assigned", "Offered to " + ", ".join(names), **extra)

    async def _offer_all(
        self, line: LineConfig, session: Session, ops: list[str], now: datetime, *, known: Known[Session] | None = None
    ) -> Session | None:
        """Offer to every free operator at once; capacity is claimed by whoever accepts."""
        expected = session.assignments + 1
        await self._arm_offer(session.id, expected, now, line.queue.wait_seconds)  # first, as in give
        updated, _ = await cas(
            self.b.sessions, session.id, Session, lambda s: transition.offered_to_all(s, ops, now, expected=expected), known=known
        )
        if updated is None or updated.status != "assigned" or updated.offered_to != ops or updated.assignments != expected:
            return None
        crash_point("router.offer.recorded")
        for op_id in ops:
            await kv_update(
                self.b.operators, op_id, OperatorState, lambda st: capacity.with_offer(st, session.id) if st else None
            )
        await self.announce(updated, ops)
        return updated
