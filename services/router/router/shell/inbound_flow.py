"""A client's message: found a duplicate, a rating, spam, or taken into a session (opened if new).

Which line takes a new chat, which auto-reply it gets and whether it is held
are decided by ``router.core.opening``; this part writes the records and the
trail around those decisions.
"""

from __future__ import annotations

import logging
from datetime import datetime

from openlines import subjects
from openlines.bus import kv_get, kv_update
from openlines.crashpoints import crash_point
from openlines.envelopes import HistoryEntry, Inbound, utcnow
from openlines.lines import LineConfig
from openlines.state import ClientRecord, Session, client_key
from router.core import client, flood, opening
from router.core import session as transition
from router.shell.base import Part, Shared, client_id_for, session_id_for
from router.shell.hints import OpenSessions
from router.shell.kv import Known, cas
from router.shell.offering import Offering
from router.shell.starting import Starting

log = logging.getLogger("router.engine")


class InboundFlow(Part):
    def __init__(self, shared: Shared, offering: Offering) -> None:
        super().__init__(shared)
        self.starting = Starting(shared, offering)
        self.hints = OpenSessions()

    async def handle(self, msg: Inbound) -> None:
        entry_line = self.lines.line_for(msg.channel, msg.account)
        if entry_line is None:
            await self.fx.event(
                f"dead:{msg.id}",
                "dead_letter",
                channel=msg.channel,
                account=msg.account,
                chat_id=msg.chat_id,
                reason=f"no line is bound to {msg.channel}/{msg.account}",
            )
            log.warning("inbound for an unbound channel account", extra={"channel": msg.channel, "account": msg.account})
            return
        ck = subjects.chat_key(msg.channel, msg.account, msg.chat_id)
        ckey = client_key(msg.channel, msg.account, ck)
        (rec, rev), early = await self.hints.read(self.b, ckey, entry_line.id)
        if rec is not None and msg.id in rec.recent_msg_ids and not await self._resumes(rec, msg, entry_line):
            log.info("duplicate inbound ignored", extra={"msg_id": msg.id})
            return
        now = utcnow()
        seen: Known[ClientRecord] = (rec, rev)  # the client record as this trigger last read or wrote it
        rating = client.rating_of(rec, msg.text, now.timestamp()) if rec is not None else None
        if rec is not None and rating is not None:
            await self._rate(rec.rating_for, rating, msg)
        elif rec is not None and rec.spam:
            await self.fx.event(
                f"dead:{msg.id}",
                "dead_letter",
                channel=msg.channel,
                account=msg.account,
                chat_id=msg.chat_id,
                reason="the client is marked as spam",
            )
        else:
            seen = await self._take_message(msg, entry_line, seen, ck, now, early)
        if seen[0] is not None and msg.id in seen[0].recent_msg_ids:
            return  # remembered with the link to the session it opened (or before: a start finished now)

        def remember(cur: ClientRecord | None) -> ClientRecord:
            fresh = ClientRecord(
                client_id=client_id_for(msg.channel, msg.account, msg.chat_id),
                channel=msg.channel,
                account=msg.account,
                chat_id=msg.chat_id,
            )
            return client.remembered(cur or fresh, msg)

        await cas(self.b.clients, ckey, ClientRecord, remember, known=seen)

    async def _resumes(self, rec: ClientRecord, msg: Inbound, entry_line: LineConfig) -> bool:
        """A remembered message that opened a session whose start a crash cut short: handle it again to finish it."""
        own_sid = session_id_for(msg.id, entry_line.id)
        if not client.opened_by(rec, entry_line.id, own_sid):
            return False  # the common duplicate: no read
        session, _ = await kv_get(self.b.sessions, own_sid, Session)
        queued = session is not None and (session.line_id, session.id) in self.waiting
        return client.resumes(rec, msg.id, entry_line.id, own_sid, session, queued)

    async def _take_message(
        self,
        msg: Inbound,
        entry_line: LineConfig,
        seen: Known[ClientRecord],
        ck: str,
        now: datetime,
        early: tuple[str, Known[Session]] | None,
    ) -> Known[ClientRecord]:
        """Put the message in its session (opened if new); returns the client record as it was left.

        ``early``: a session read beside the client record on a hint (``router.shell.hints``)."""
        rec = seen[0]
        own_sid = session_id_for(msg.id, entry_line.id)
        ckey = client_key(msg.channel, msg.account, ck)
        opened = await self._open_session_of(rec, ckey, entry_line, early)
        session = opened[0] if opened is not None else None
        # A session this very message opened is "new" even when found again
        # after a crash, so whatever its start did not finish is done now.
        is_new = session is None or session.id == own_sid
        first_contact = rec is None or opening.first_contact(
            rec.sessions_total, rec.open_sessions.get(entry_line.id, ""), own_sid
        )
        created: Known[Session] | None = None
        if session is None:
            line = opening.route(entry_line, self.lines.lines, now)
            created, seen = await self._create_session(msg, line, entry_line, seen, ck, now)
            session = created[0]
            assert session is not None
            self.hints.saw(ckey, entry_line.id, session.id if session.is_open else None)
            if not session.is_open:
                # This message opened a chat that has been answered and closed since;
                # it comes again because a crash kept it from being acknowledged.
                log.info("inbound already handled: its chat is closed", extra={"msg_id": msg.id, "session": session.id})
                return seen
        counted = session.id == own_sid and session.messages_in >= 1  # opened by this message, counted on creation
        held = False
        guarded = not counted and self.flood.guards(msg.channel)
        if guarded:
            # Counted by the flood guard first: whether this message is held is part of its transcript line.
            if touched := await self._touch(msg, session, opened, now, self.flood):
                session, created = touched, None
            held = await self._flood_check(session)
        # The message, and a new session's opening and auto-reply, in one round trip; all
        # stored before the chat is offered or queued (which a redelivery would not redo).
        started: tuple[LineConfig, opening.Opening] | None = None
        async with self.fx.together():
            await self.fx.history(_line_of(msg, session.id, held=held))
            # The transcript line is on its way meanwhile: the operator sees the message without waiting for this
            # write (redone with the message if it fails; the line's id makes that harmless).
            if not counted and not guarded and (touched := await self._touch(msg, session, opened, now, None)):
                session, created = touched, None
            await self._arm_idle(session)
            if is_new:
                started = await self.starting.start(session, first_contact, now)
        if started is not None:
            await self.starting.place(started[0], session, started[1], now, known=created)
        return seen

    async def _touch(
        self, msg: Inbound, session: Session, known: Known[Session] | None, now: datetime, rule: flood.FloodRule | None
    ) -> Session | None:
        """The message counted on its session (and by the flood guard ``rule``), written on the revision read."""
        client_at = client.client_time(msg)
        touched, _ = await cas(
            self.b.sessions,
            session.id,
            Session,
            lambda s: transition.touched(s, now, inbound=True, rule=rule, client_at=client_at),
            known=known,
        )
        return touched

    async def _flood_check(self, session: Session) -> bool:
        """Whether this message (already counted on ``session``) is held; flags the chat at the first one held."""
        counted = flood.Count(window_start=session.flood_window, count=session.flood_count)
        if counted.first_held(self.flood):
            span = "a minute" if self.flood.window == 60 else f"{self.flood.window:g} seconds"
            text = (
                f"Flood: more than {self.flood.limit} messages in {span}, held for a supervisor "
                "(stored; the operator is not notified of each one until it stops)"
            )
            window = int(counted.window_start)
            await self._trail(session, f"flagged:{session.id}:{window}", "session_flagged", text, reason=text)
            log.warning("chat flooding: held for a supervisor", extra={"session": session.id, "channel": session.channel})
        return counted.held(self.flood)

    async def _open_session_of(
        self, rec: ClientRecord | None, ckey: str, entry_line: LineConfig, early: tuple[str, Known[Session]] | None
    ) -> Known[Session] | None:
        """The client's open session on the line and its revision, or None (read already if ``early`` is it)."""
        sid = rec.open_sessions.get(entry_line.id, "") if rec is not None else ""
        current, rev = (None, None)
        if sid:
            current, rev = early[1] if early is not None and early[0] == sid else await kv_get(self.b.sessions, sid, Session)
        open_now = current is not None and current.is_open
        self.hints.saw(ckey, entry_line.id, sid if open_now else None)
        return (current, rev) if open_now else None

    async def _create_session(
        self, msg: Inbound, line: LineConfig, entry_line: LineConfig, seen: Known[ClientRecord], ck: str, now: datetime
    ) -> tuple[Known[Session], Known[ClientRecord]]:
        """The session this message opens (or found again, after a crash) and the client record linked to it."""
        rec = seen[0]
        sid = session_id_for(msg.id, entry_line.id)
        fresh = Session(
            id=sid,
            line_id=line.id,
            entry_line_id=entry_line.id,
            client_id=rec.client_id if rec else client_id_for(msg.channel, msg.account, msg.chat_id),
            channel=msg.channel,
            account=msg.account,
            chat_id=msg.chat_id,
            chat_key=ck,
            client_name=client.name_of(rec, msg),
            opened_at=msg.received_at,
            no_auto_reply=msg.no_auto_reply,
            last_message_at=now,  # this first message is counted here: no separate touch for a new session
            messages_in=1,
            flood_window=msg.received_at.timestamp(),
            flood_count=1,
            client_last_at=client.client_time(msg),
        )
        created = await cas(self.b.sessions, sid, Session, lambda cur: fresh if cur is None else None, known=(None, None))
        session = created[0]
        assert session is not None
        if not session.is_open:
            return created, seen  # opened by this very message and closed since: nothing to link

        # The client points at its open session before anything is offered, so a message
        # that follows finds it even if this one is still in hand. The profile is stored
        # before the session is announced, so whoever reacts to session_opened (crm-sync)
        # reads the phone/e-mail of this message.
        def link(cur: ClientRecord | None) -> ClientRecord:
            rec = cur or ClientRecord(client_id=session.client_id, channel=msg.channel, account=msg.account, chat_id=msg.chat_id)
            return client.linked(rec, msg, entry_line.id, sid)

        linked = await cas(self.b.clients, client_key(msg.channel, msg.account, ck), ClientRecord, link, known=seen)
        crash_point("router.inbound.linked")
        return created, linked

    async def _rate(self, session_id: str, rating: int, msg: Inbound) -> None:
        """Record the client's mark on the closed session; it opens no new conversation."""
        rated = await kv_update(self.b.sessions, session_id, Session, lambda s: transition.rated(s, rating))
        if rated is None:
            return
        await self.fx.history(_line_of(msg, session_id))
        await self._trail(rated, f"rated:{session_id}", "session_rated", f"Rated {rating} of 5 by the client", reason=str(rating))


def _line_of(msg: Inbound, session_id: str, *, held: bool = False) -> HistoryEntry:
    """The client's message as a transcript line of the session."""
    return HistoryEntry(
        id=msg.id,
        session_id=session_id,
        direction="in",
        text=msg.text,
        attachments=msg.attachments,
        author_id=msg.user_id,
        author_name=msg.profile.name,
        at=msg.received_at,
        held=held,
    )
