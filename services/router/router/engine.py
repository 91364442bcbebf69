"""The imperative shell of the router: load state, ask the core, apply the result.

All state lives in KV and is changed by compare-and-set, so the same work can
be redone after a crash (inbound redelivery, command retry, timer refire)
without doubling anything: session ids and message ids are derived from the
triggering id, and every publish carries its id as Nats-Msg-Id.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from openlines import hours, subjects, tags, templates, window
from openlines.bus import Buckets, kv_entries, kv_get, kv_update
from openlines.commands import TemplateChoice
from openlines.crashpoints import crash_point
from openlines.envelopes import Attachment, ClientProfile, HistoryEntry, Inbound, Outbound, TemplateMessage, utcnow
from openlines.lines import LineConfig, QueueConfig
from openlines.state import (
    RECENT_IDS_KEPT,
    ClientRecord,
    OperatorAccount,
    OperatorState,
    OperatorStatus,
    Session,
    client_key,
)
from router.core import autoreply, distribution, flood
from router.effects import Effects
from router.lines_cache import LinesCache
from router.operators_cache import OperatorsCache
from router.timers import NotDue, Timer, schedule
from router.waiting import Waiting

log = logging.getLogger("router.engine")

CRM_LOOKUP_TIMEOUT = 0.5  # routing never waits longer than this on the CRM
RATING_WINDOW = 24 * 3600.0  # seconds a rating request stays open after the close
SETTLE_AFTER = 10.0  # seconds after which the "settle" timer completes a change cut short by a crash
TIMER_SLACK = 0.05  # seconds a timer may fire early (clock granularity, the stream's delay rounding)
REANNOUNCE_WITHIN = 600.0  # seconds after an offer its announcement may be repeated safely (streams dedupe 15 min)
CLEAN_RECHECK_SECONDS = 10.0  # an operator found with no stale claim is not looked at again sooner, unless changed
WAITING_NOTE = "Waiting for an operator"


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


def _closing(session: Session) -> bool:
    """Closed a moment ago and the steps after it (the release first) not done yet."""
    if session.status != "closed" or session.close_finished or session.closed_at is None:
        return False
    return time.time() - session.closed_at.timestamp() < 3 * SETTLE_AFTER


def load_of(st: OperatorState, queue: QueueConfig) -> int:
    """The chats that count toward the operator's capacity on this line."""
    if queue.count == "unanswered":
        answered = set(st.answered)
        return sum(1 for s in st.sessions if s not in answered)
    return len(st.sessions)


class Engine:
    def __init__(
        self,
        js: JetStreamContext,
        buckets: Buckets,
        lines: LinesCache,
        operators: OperatorsCache | None,
        waiting: Waiting,
        flood_rule: flood.FloodRule | None = None,
    ) -> None:
        self.js = js
        self.flood = flood_rule or flood.FloodRule(limit=0, window=60.0, channels=frozenset())
        self.nc = js._nc
        self.b = buckets
        self.lines = lines
        self.operators = operators  # a watch-fed copy of ol-operators; None = read KV for every decision
        self.waiting = waiting  # every line's waiting queue (ol-waiting, one key per chat)
        self._found_clean: dict[str, tuple[int, float]] = {}  # operator -> (revision, when) with no stale claim
        self.fx = Effects(js)

    # ------------------------------------------------------------------ inbound

    async def handle_inbound(self, msg: Inbound) -> None:
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
        client, _ = await kv_get(self.b.clients, ckey, ClientRecord)
        if client is not None and msg.id in client.recent_msg_ids:
            log.info("duplicate inbound ignored", extra={"msg_id": msg.id})
            return
        rating = _rating_in(msg.text) if client is not None and client.rating_for and time.time() < client.rating_until else None
        if client is not None and rating is not None:
            await self._rate(client.rating_for, rating, msg)
        elif client is not None and client.spam:
            await self.fx.event(
                f"dead:{msg.id}",
                "dead_letter",
                channel=msg.channel,
                account=msg.account,
                chat_id=msg.chat_id,
                reason="the client is marked as spam",
            )
        else:
            await self._take_message(msg, entry_line, client, ck)

        def remember(cur: ClientRecord | None) -> ClientRecord:
            rec = cur or ClientRecord(
                client_id=client_id_for(msg.channel, msg.account, msg.chat_id),
                channel=msg.channel,
                account=msg.account,
                chat_id=msg.chat_id,
            )
            return msgspec.structs.replace(
                rec,
                profile=_merge_profile(rec.profile, msg.profile),
                recent_msg_ids=[*rec.recent_msg_ids, msg.id][-RECENT_IDS_KEPT:],
                rating_for="",  # answered (a rating) or moved on (anything else): the request is over
                rating_until=0.0,
            )

        await kv_update(self.b.clients, ckey, ClientRecord, remember)

    async def _take_message(self, msg: Inbound, entry_line: LineConfig, client: ClientRecord | None, ck: str) -> None:
        now = utcnow()
        own_sid = session_id_for(msg.id, entry_line.id)
        session = await self._open_session_of(client, entry_line)
        # A session this very message opened is "new" even when found again
        # after a crash, so whatever its start did not finish is done now.
        is_new = session is None or session.id == own_sid
        first_contact = (
            client is None
            or client.sessions_total == 0
            or (client.sessions_total == 1 and client.open_sessions.get(entry_line.id) == own_sid)
        )
        if session is None:
            line = self._route_line(entry_line, now)
            session = await self._create_session(msg, line, entry_line, client, ck)
            if not session.is_open:
                # This message opened a chat that has been answered and closed since;
                # it comes again because a crash kept it from being acknowledged.
                log.info("inbound already handled: its chat is closed", extra={"msg_id": msg.id, "session": session.id})
                return
        counted = session.id == own_sid and session.messages_in >= 1  # opened by this message, counted on creation
        held = False
        if not counted:
            guarded = self.flood.guards(msg.channel)
            client_at = _client_time(msg)
            touched = await kv_update(
                self.b.sessions,
                session.id,
                Session,
                lambda s: _touch(s, now, inbound=True, rule=self.flood if guarded else None, client_at=client_at),
            )
            if touched is not None:
                session = touched
            if guarded:
                held = await self._flood_check(session)
        await self.fx.history(
            HistoryEntry(
                id=msg.id,
                session_id=session.id,
                direction="in",
                text=msg.text,
                attachments=msg.attachments,
                author_id=msg.user_id,
                author_name=msg.profile.name,
                at=msg.received_at,
                held=held,
            )
        )
        await self._arm_idle(session)
        if is_new:
            await self._start(session, first_contact, now)

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

    async def _open_session_of(self, client: ClientRecord | None, entry_line: LineConfig) -> Session | None:
        if client is None:
            return None
        sid = client.open_sessions.get(entry_line.id)
        if not sid:
            return None
        current, _ = await kv_get(self.b.sessions, sid, Session)
        return current if current is not None and current.is_open else None

    def _route_line(self, line: LineConfig, now: datetime) -> LineConfig:
        """The line a new chat goes to: the redirect target when this one is closed and says so."""
        h = line.hours
        if h.enabled and h.outside == "redirect" and not hours.is_open(h, now):
            target = self.lines.lines.get(h.redirect_line)
            if target is not None:
                return target
        return line

    async def _create_session(
        self, msg: Inbound, line: LineConfig, entry_line: LineConfig, client: ClientRecord | None, ck: str
    ) -> Session:
        sid = session_id_for(msg.id, entry_line.id)
        fresh = Session(
            id=sid,
            line_id=line.id,
            entry_line_id=entry_line.id,
            client_id=client.client_id if client else client_id_for(msg.channel, msg.account, msg.chat_id),
            channel=msg.channel,
            account=msg.account,
            chat_id=msg.chat_id,
            chat_key=ck,
            client_name=msg.profile.name or (client.profile.name if client else ""),
            opened_at=msg.received_at,
            no_auto_reply=msg.no_auto_reply,
            last_message_at=utcnow(),  # this first message is counted here: no separate touch for a new session
            messages_in=1,
            flood_window=msg.received_at.timestamp(),
            flood_count=1,
            client_last_at=_client_time(msg),
        )
        session = await kv_update(self.b.sessions, sid, Session, lambda cur: fresh if cur is None else None)
        assert session is not None
        if not session.is_open:
            return session  # opened by this very message and closed since: nothing to link

        # The client points at its open session before anything is offered, so
        # a message that follows finds it even if this one is still in hand.
        def link(cur: ClientRecord | None) -> ClientRecord:
            rec = cur or ClientRecord(client_id=session.client_id, channel=msg.channel, account=msg.account, chat_id=msg.chat_id)
            if rec.open_sessions.get(entry_line.id) == sid:
                return rec
            # The profile is stored before the session is announced, so whoever
            # reacts to session_opened (crm-sync) reads the phone/e-mail of this message.
            return msgspec.structs.replace(
                rec,
                profile=_merge_profile(rec.profile, msg.profile),
                open_sessions={**rec.open_sessions, entry_line.id: sid},
                sessions_total=rec.sessions_total + 1,
            )

        await kv_update(self.b.clients, client_key(msg.channel, msg.account, ck), ClientRecord, link)
        return session

    async def _start(self, session: Session, first_contact: bool, now: datetime) -> None:
        """What a new session gets: the opening event, the right auto-reply, a place in the queue."""
        line = self.lines.lines.get(session.line_id)
        if line is None:
            return
        redirected = session.line_id != session.entry_line_id
        opened = f"Outside business hours: redirected to {line.name}" if redirected else f"Opened on {line.name}"
        await self._trail(session, f"opened:{session.id}", "session_opened", opened)
        closed = line.hours.enabled and not hours.is_open(line.hours, now)
        entry = self.lines.lines.get(session.entry_line_id, line)
        if closed and line.auto_replies.outside_hours:
            await self._auto(session, f"outside:{session.id}", autoreply.outside_hours(line, session.client_name), now)
        elif session.line_id != session.entry_line_id and entry.auto_replies.outside_hours:
            await self._auto(session, f"outside:{session.id}", autoreply.outside_hours(entry, session.client_name), now)
        elif line.auto_replies.welcome and (first_contact or line.auto_replies.welcome_each_session):
            await self._auto(session, f"welcome:{session.id}", autoreply.welcome(line, session.client_name), now)
        if closed and line.hours.outside == "hold_until_open":
            session = await self._hold(line, session, now)
        if session.status == "waiting":
            await self._enqueue(line, session, session.opened_at.timestamp())
            await self.drain(line, after_queueing=True)
            after, _ = await kv_get(self.b.sessions, session.id, Session)
            if after is not None and after.status == "waiting":
                await self._trail(after, f"waiting:{session.id}:{after.assignments}", "session_waiting", WAITING_NOTE)
                await self._tell_position(line, after, now)

    async def _hold(self, line: LineConfig, session: Session, now: datetime) -> Session:
        opening = hours.next_opening(line.hours, now)
        held = await kv_update(
            self.b.sessions, session.id, Session, lambda s: msgspec.structs.replace(s, held=True) if s and not s.held else None
        )
        session = held or session
        await self._trail(session, f"held:{session.id}", "session_held", "Outside business hours: held until the line opens")
        if opening is not None:
            await schedule(
                self.js, Timer(kind="opening", target=line.id, due=opening.timestamp(), token=opening.strftime("%Y%m%dT%H%M%S"))
            )
        return session

    async def _tell_position(self, line: LineConfig, session: Session, now: datetime) -> None:
        if not (line.queue.tell_position and line.auto_replies.queue_position):
            return
        pos = self.waiting.position(line.id, session.id)
        if pos:
            text = autoreply.queue_position(line, session.client_name, pos)
            await self._auto(session, f"position:{session.id}:{session.assignments}", text, now)

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

    async def _arm_idle(self, session: Session) -> None:
        line = self.lines.lines.get(session.line_id)
        if line is None or line.session.auto_close_minutes <= 0 or session.last_message_at is None:
            return
        due = session.last_message_at + timedelta(minutes=line.session.auto_close_minutes)
        await schedule(
            self.js,
            Timer(kind="idle", target=session.id, due=due.timestamp(), token=str(session.last_message_at.timestamp())),
        )

    # --------------------------------------------------------------- distribution

    async def _views(self, line: LineConfig, *, live: bool = False) -> list[distribution.OperatorView]:
        """The line's operators as routing sees them: from the watch-fed copy, or ``live`` from KV."""
        if live or self.operators is None or not self.operators.loaded.is_set():
            # One round trip for the whole queue, not one per operator: the claim re-checks by compare-and-set.
            found = await asyncio.gather(*(kv_get(self.b.operators, op_id, OperatorState) for op_id in line.queue.operators))
            if self.operators is not None:
                for op_id, (st, rev) in zip(line.queue.operators, found, strict=True):
                    self.operators.put(op_id, st, rev)
            states = [st for st, _ in found]
        else:
            states = [self.operators.get(op_id) for op_id in line.queue.operators]
        return [
            distribution.OperatorView(
                id=op_id, status=st.status, open_chats=load_of(st, line.queue), last_assigned_at=st.last_assigned_at
            )
            for op_id, st in zip(line.queue.operators, states, strict=True)
            if st is not None
        ]

    async def _claim(self, op_id: str, sid: str, queue: QueueConfig, now: datetime, *, any_status: bool = False) -> bool:
        """Reserve capacity on an operator by compare-and-set; False if they can no longer take it."""
        for _ in range(20):
            st, rev = await kv_get(self.b.operators, op_id, OperatorState)
            if self.operators is not None:
                self.operators.put(op_id, st, rev)  # the next decision sees what this claim saw
            if st is None or rev is None:
                return False
            if sid in st.sessions:
                return True
            if not any_status and st.status != "online" and queue.skip_offline:
                return False
            if load_of(st, queue) >= queue.max_chats_per_operator:
                stale = await self._stale_claims(op_id, st)
                if not stale:
                    return False
                st = _without(st, stale)  # a crash left claims behind: they do not count
                if load_of(st, queue) >= queue.max_chats_per_operator:
                    await self._drop_stale(op_id, stale)
                    return False
            new = msgspec.structs.replace(st, sessions=[*st.sessions, sid], last_assigned_at=now.timestamp())
            try:
                written = await self.b.operators.update(op_id, msgspec.json.encode(new), last=rev)
                if self.operators is not None:
                    self.operators.put(op_id, new, written)
                return True
            except (KeyWrongLastSequenceError, BadRequestError):
                continue
        return False

    async def _stale_claims(self, op_id: str, st: OperatorState) -> set[str]:
        """Sessions on an operator's list that are no longer theirs (closed, or held by someone else).

        A router killed between claiming capacity and recording the offer
        leaves such an entry; a chat still waiting may be a claim in flight
        and is kept, and so is a chat whose close is still being finished
        (the close, or its settle timer, releases it in a moment).
        """
        found = await asyncio.gather(*(kv_get(self.b.sessions, sid, Session) for sid in st.sessions))
        stale: set[str] = set()
        for sid, (session, _) in zip(st.sessions, found, strict=True):
            gone = session is None or (not session.is_open and not _closing(session))
            if gone or (session is not None and session.operator_id and session.operator_id != op_id):
                stale.add(sid)
        return stale

    async def _prune_full(self, line: LineConfig) -> bool:
        """Nobody can take a chat: drop stale claims of the line's online operators who look full. True if any."""
        dropped = False
        for op_id in line.queue.operators:
            st, rev = await kv_get(self.b.operators, op_id, OperatorState)
            if st is None or st.status != "online" or load_of(st, line.queue) < line.queue.max_chats_per_operator:
                continue
            # Looking at every chat an operator holds costs one read each: with a long queue every
            # new chat would repeat it. An unchanged operator found clean a moment ago is not re-read.
            checked = self._found_clean.get(op_id)
            if checked is not None and checked[0] == rev and time.monotonic() - checked[1] < CLEAN_RECHECK_SECONDS:
                continue
            stale = await self._stale_claims(op_id, st)
            if not stale and rev is not None:
                self._found_clean[op_id] = (rev, time.monotonic())
            if stale:
                log.warning("dropping stale capacity claims", extra={"operator": op_id, "sessions": sorted(stale)})
                await self._drop_stale(op_id, stale)
                dropped = True
        return dropped

    async def _drop_stale(self, op_id: str, stale: set[str]) -> None:
        await kv_update(self.b.operators, op_id, OperatorState, lambda st: _without(st, stale) if st else None)

    async def sweep_stale_claims(self) -> int:
        """Drop every operator's stale claims (run now and then); returns how many were dropped."""
        dropped = 0
        for op_id, (_, data) in (await kv_entries(self.js, subjects.KV_OPERATORS)).items():
            st = msgspec.json.decode(data, type=OperatorState)
            stale = await self._stale_claims(op_id, st)
            if stale:
                log.warning("dropping stale capacity claims", extra={"operator": op_id, "sessions": sorted(stale)})
                await self._drop_stale(op_id, stale)
                dropped += len(stale)
                for line in self.lines.lines_of(op_id):
                    await self.drain(line)
        return dropped

    async def _release(self, op_id: str, sid: str) -> None:
        if not op_id:
            return

        def drop(st: OperatorState | None) -> OperatorState | None:
            if st is None or (sid not in st.sessions and sid not in st.answered and sid not in st.offers):
                return None
            return msgspec.structs.replace(
                st,
                sessions=[s for s in st.sessions if s != sid],
                answered=[s for s in st.answered if s != sid],
                offers=[s for s in st.offers if s != sid],
            )

        await kv_update(self.b.operators, op_id, OperatorState, drop)

    async def _enqueue(self, line: LineConfig, session: Session, since: float) -> None:
        await self.waiting.add(line.id, session.id, since)

    async def _dequeue(self, line_id: str, sid: str) -> None:
        await self.waiting.remove(line_id, sid)

    async def drain(self, line: LineConfig, *, after_queueing: bool = False) -> None:
        """Offer waiting chats of a line, oldest first, while operators have room.

        ``after_queueing``: the drain follows this replica queueing a new chat, and no
        operator freed room meanwhile, so a chat another replica queued a moment ago
        is that replica's to offer (it drained after queueing it); no need to catch up.
        """
        now = utcnow()
        if line.hours.enabled and line.hours.outside == "hold_until_open" and not hours.is_open(line.hours, now):
            return  # held chats wait for the opening timer
        while True:
            head = self.waiting.head(line.id)
            if head is None:
                if after_queueing:
                    return
                # Before saying nobody waits: a chat another replica queued a moment ago must be seen.
                await self.waiting.sync()
                head = self.waiting.head(line.id)
                if head is None:
                    return
            session, _ = await kv_get(self.b.sessions, head.session_id, Session)
            if session is None or session.status != "waiting" or session.line_id != line.id:
                await self._dequeue(line.id, head.session_id)
                continue
            assigned = await self._assign(line, session)
            if assigned is None:
                return
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

    async def _assign(self, line: LineConfig, session: Session, exclude: frozenset[str] = frozenset()) -> Session | None:
        """Offer a waiting chat to the operator the line's mode picks, or None if nobody can take it now."""
        now = utcnow()
        preferred = await self._responsible(session) if line.queue.mode == "crm_responsible" else None
        live = False
        for _ in range(10):
            views = await self._views(line, live=live)
            ctx = distribution.Context(exclude=exclude | frozenset(session.declined_by), preferred=preferred)
            chosen_ops = distribution.pick_many(line.queue, views, ctx)
            if not chosen_ops and session.declined_by:
                # Everyone free has let it pass once: start a new round rather than let it hang.
                ctx = distribution.Context(exclude=exclude, preferred=preferred)
                chosen_ops = distribution.pick_many(line.queue, views, ctx)
            if not chosen_ops:
                if not live:
                    live = True  # the copy may be a moment behind: decide once more on the live values
                    continue
                if await self._prune_full(line):
                    continue  # someone only looked full: decide again
                return None
            if line.queue.mode == "all" or len(chosen_ops) > 1:  # "all", or "all" as crm_responsible's fallback
                return await self._offer_all(line, session, chosen_ops, now)
            op_id = chosen_ops[0]
            if not await self._claim(op_id, session.id, line.queue, now):
                continue  # their state changed under us: decide again on fresh state
            updated = await self._give(
                session.id,
                op_id,
                now,
                from_status="waiting",
                assignments=session.assignments,
                wait_seconds=line.queue.wait_seconds,
            )
            if updated is None:
                await self._release(op_id, session.id)  # closed or taken meanwhile
                return None
            return updated
        return None

    async def _give(
        self,
        sid: str,
        op_id: str,
        now: datetime,
        *,
        from_status: str,
        assignments: int,
        wait_seconds: float,
        cause: Callable[[Session], Awaitable[None]] | None = None,
    ) -> Session | None:
        """Record the offer on the session (its no-answer timer set first) and announce it.

        ``assignments``: the session's count as the caller read it; the offer makes it one more.
        ``cause``: writes what led to the offer (a transfer) into the trail before the offer's line.
        """
        expected = assignments + 1
        for _ in range(10):
            # The timer before the record: a crash right after the record must not leave the
            # chat offered for ever to an operator who never answers (nothing else would
            # notice: the message that opened it, redelivered, finds it no longer waiting).
            await self._arm_offer(sid, expected, now, wait_seconds)

            def give(s: Session | None, expected: int = expected) -> Session | None:
                if s is None or s.status != from_status or s.assignments + 1 != expected:
                    return None
                restart = not [d for d in s.declined_by if d != op_id] or op_id in s.declined_by
                return msgspec.structs.replace(
                    s,
                    status="assigned",
                    operator_id=op_id,
                    assigned_at=now,
                    assignments=expected,
                    declined_by=[] if restart else s.declined_by,
                    held=False,
                )

            updated = await kv_update(self.b.sessions, sid, Session, give)
            if updated is not None and updated.status == from_status and updated.assignments + 1 != expected:
                expected = updated.assignments + 1  # offered and passed on meanwhile elsewhere: arm for the count now
                continue
            if updated is None or updated.operator_id != op_id or updated.status != "assigned" or updated.assignments != expected:
                return None
            crash_point("router.offer.recorded")
            if cause is not None:
                await cause(updated)
            await self._announce_offer(updated, [op_id])
            log.info("chat offered", extra={"session": sid, "line": updated.line_id, "operator": op_id})
            return updated
        return None

    async def _arm_offer(self, sid: str, assignments: int, now: datetime, wait_seconds: float) -> None:
        """The no-answer timer of a session's offer number ``assignments`` (stale, and harmless, if the offer is not made)."""
        await schedule(self.js, Timer(kind="offer", target=sid, due=now.timestamp() + wait_seconds, token=str(assignments)))

    async def _announce_offer(self, session: Session, ops: list[str]) -> None:
        """The offer's event and transcript line (deterministic ids: announcing it again writes nothing twice)."""
        key = f"assigned:{session.id}:{session.assignments}"
        names = [await self._name(op) for op in ops]
        extra = {"reason": "offered to all"} if session.offered_to else {}
        await self._trail(session, key, "session_assigned", "Offered to " + ", ".join(names), **extra)

    async def _offer_all(self, line: LineConfig, session: Session, ops: list[str], now: datetime) -> Session | None:
        """Mode "all": offer to every free operator at once; capacity is claimed by whoever accepts."""
        expected = session.assignments + 1
        await self._arm_offer(session.id, expected, now, line.queue.wait_seconds)  # first, as in _give

        def offer(s: Session | None) -> Session | None:
            if s is None or s.status != "waiting" or s.assignments + 1 != expected:
                return None
            return msgspec.structs.replace(
                s, status="assigned", operator_id="", offered_to=ops, assigned_at=now, assignments=expected, held=False
            )

        updated = await kv_update(self.b.sessions, session.id, Session, offer)
        if updated is None or updated.status != "assigned" or updated.offered_to != ops or updated.assignments != expected:
            return None
        crash_point("router.offer.recorded")
        for op_id in ops:
            await kv_update(
                self.b.operators,
                op_id,
                OperatorState,
                lambda st: (
                    msgspec.structs.replace(st, offers=[*st.offers, session.id]) if st and session.id not in st.offers else None
                ),
            )
        await self._announce_offer(updated, ops)
        return updated

    async def _name(self, op_id: str) -> str:
        acc, _ = await kv_get(self.b.accounts, op_id, OperatorAccount)
        return acc.name if acc else op_id

    async def _take(self, op_id: str, session: Session) -> Session:
        """The first operator to accept an offer made to all takes the chat; the others' offers are withdrawn."""
        line = self.lines.lines.get(session.line_id)
        queue = line.queue if line else QueueConfig()
        now = utcnow()
        if not await self._claim(op_id, session.id, queue, now, any_status=True):
            raise Refused("conflict", "you have no room for another chat; close one first")
        assignments = session.assignments

        def take(s: Session | None) -> Session | None:
            if s is None or s.status != "assigned" or s.operator_id or op_id not in s.offered_to or s.assignments != assignments:
                return None
            return msgspec.structs.replace(s, operator_id=op_id, offered_to=[])

        updated = await kv_update(self.b.sessions, session.id, Session, take)
        if updated is None or updated.operator_id != op_id:
            await self._release(op_id, session.id)
            raise Refused("conflict", "another operator has taken this chat")
        for other in session.offered_to:
            await self._withdraw(other, session.id)
        tid = f"taken:{session.id}:{assignments}"
        await self._trail(updated, tid, "session_assigned", f"Taken by {await self._name(op_id)}", reason="accepted first")
        return updated

    async def _withdraw(self, op_id: str, sid: str) -> None:
        await kv_update(
            self.b.operators,
            op_id,
            OperatorState,
            lambda st: (
                msgspec.structs.replace(st, offers=[o for o in st.offers if o != sid]) if st and sid in st.offers else None
            ),
        )

    async def _pass_on(self, session: Session, reason: str) -> None:
        """The operator let an offer pass: give it to the next one (never straight back while others are free)."""
        op_id = session.operator_id
        passing = [op_id] if op_id else list(session.offered_to)
        assignments = session.assignments

        def back(s: Session | None) -> Session | None:
            if s is None or s.status != "assigned" or s.assignments != assignments:
                return None
            return msgspec.structs.replace(
                s, status="waiting", operator_id="", offered_to=[], assigned_at=None, declined_by=[*s.declined_by, *passing]
            )

        await self._settle_later(session.id)
        requeued = await kv_update(self.b.sessions, session.id, Session, back)
        if requeued is None or requeued.status != "waiting" or requeued.assignments != assignments:
            return
        for op in passing:
            await self._release(op, session.id)
        did = f"declined:{session.id}:{assignments}"
        await self._trail(session, did, "offer_declined", f"Passed on: {reason}", reason=reason)
        line = self.lines.lines.get(requeued.line_id)
        if line is None:
            return
        await self._enqueue(line, requeued, requeued.opened_at.timestamp())
        await self.drain(line)
        after, _ = await kv_get(self.b.sessions, session.id, Session)
        if after is not None and after.status == "waiting":
            wid = f"waiting:{session.id}:{after.assignments}:{op_id}"
            await self._trail(after, wid, "session_waiting", WAITING_NOTE, reason=reason)

    # -------------------------------------------------------------------- timers

    async def fire(self, timer: Timer) -> None:
        if timer.kind == "offer":
            session, _ = await kv_get(self.b.sessions, timer.target, Session)
            if session is not None and session.status == "assigned" and str(session.assignments) == timer.token:
                await self._no_answer(session)
        elif timer.kind == "idle":
            session, _ = await kv_get(self.b.sessions, timer.target, Session)
            if (
                session is not None
                and session.is_open
                and session.last_message_at is not None
                and str(session.last_message_at.timestamp()) == timer.token
            ):
                await self._close(session, closed_by="auto", reason="auto_close")
        elif timer.kind == "settle":
            await self.settle(timer.target)
        elif timer.kind == "opening":
            line = self.lines.lines.get(timer.target)
            if line is not None:
                await self.drain(line)
        elif timer.kind == "presence":
            st, _ = await kv_get(self.b.operators, timer.target, OperatorState)
            if st is not None and not st.desks and str(st.disconnected_at) == timer.token and st.status != "offline":
                log.info("operator's desk gone past the grace period: offline", extra={"operator": timer.target})
                await self.set_status(timer.target, "offline")

    async def _no_answer(self, session: Session) -> None:
        """An offer's no-answer timer fired for it: pass the chat on (when the offer's time is really up)."""
        line = self.lines.lines.get(session.line_id)
        if session.assigned_at is not None and line is not None:
            # A timer armed for an offer that a crash cut short, then made again later, comes early.
            left = session.assigned_at.timestamp() + line.queue.wait_seconds - time.time()
            if left > TIMER_SLACK:
                raise NotDue(left)
            if -left < REANNOUNCE_WITHIN - line.queue.wait_seconds:
                # A crash right after the offer was recorded left it unannounced: the trail gets it
                # now (the same ids: nothing twice while the streams' duplicate window remembers them).
                await self._announce_offer(session, [session.operator_id] if session.operator_id else session.offered_to)
        await self._pass_on(session, "no answer")

    async def _settle_later(self, session_id: str) -> None:
        """Set before a change that takes several writes (close, pass on, move, transfer).

        If this process dies or NATS goes away half way, the timer fires on
        another replica and ``settle`` completes what the session's own record
        says should have followed. Harmless when the change went through.
        """
        due = time.time() + SETTLE_AFTER
        await schedule(self.js, Timer(kind="settle", target=session_id, due=due, token=secrets.token_hex(6)))

    async def settle(self, session_id: str) -> None:
        """Make what surrounds a session agree with its record: a closed one is finished, a waiting one is queued."""
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            return
        if session.status == "closed" and not session.close_finished:
            log.warning("finishing a close that was cut short", extra={"session": session.id})
            await self._finish_close(session)
            return
        line = self.lines.lines.get(session.line_id)
        if session.status != "waiting" or session.held or line is None:
            return
        if (line.id, session.id) not in self.waiting:
            log.warning("queueing a waiting chat whose move was cut short", extra={"session": session.id})
            await self._enqueue(line, session, session.opened_at.timestamp())
        await self.drain(line)

    # ------------------------------------------------------------------ commands

    async def _account(self, operator_id: str) -> OperatorAccount:
        acc, _ = await kv_get(self.b.accounts, operator_id, OperatorAccount)
        if acc is None:
            raise Refused("not_found", f"operator {operator_id!r} does not exist")
        if "openlines" not in acc.permissions:
            raise Refused("forbidden", f"operator {operator_id!r} lacks the 'openlines' permission")
        return acc

    async def _own_session(self, operator_id: str, session_id: str, *, take: bool = False) -> Session:
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        if take and session.status == "assigned" and not session.operator_id and operator_id in session.offered_to:
            return await self._take(operator_id, session)
        if session.operator_id != operator_id:
            raise Refused("forbidden", f"session {session_id!r} is not assigned to {operator_id!r}")
        if not session.is_open:
            raise Refused("conflict", f"session {session_id!r} is closed")
        return session

    async def set_status(self, operator_id: str, status: OperatorStatus) -> OperatorState:
        await self._account(operator_id)
        now = utcnow()

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
                await self.drain(line)
        else:
            await self._hand_over(operator_id, state)
        final, _ = await kv_get(self.b.operators, operator_id, OperatorState)
        return final or state

    async def _hand_over(self, operator_id: str, state: OperatorState) -> None:
        """An absent operator keeps no unanswered chat (and, if the line says so, no open one)."""
        for sid in list(state.offers):
            offered, _ = await kv_get(self.b.sessions, sid, Session)
            if offered is not None and offered.status == "assigned" and operator_id in offered.offered_to:
                await self._decline_offer(operator_id, offered, "operator away")
            else:
                await self._withdraw(operator_id, sid)
        for sid in list(state.sessions):
            session, _ = await kv_get(self.b.sessions, sid, Session)
            if session is None or session.operator_id != operator_id or not session.is_open:
                continue
            line = self.lines.lines.get(session.line_id)
            policy = line.queue.reassign_on_status if line else "unanswered"
            if session.status == "assigned" and policy in ("unanswered", "all"):
                await self._pass_on(session, "operator away")
            elif session.status == "answered" and policy == "all" and not session.pinned:
                await self._move_answered(session, "operator away")

    async def _move_answered(self, session: Session, reason: str) -> None:
        op_id = session.operator_id

        def back(s: Session | None) -> Session | None:
            if s is None or s.status != "answered" or s.operator_id != op_id:
                return None
            return msgspec.structs.replace(s, status="waiting", operator_id="", assigned_at=None, declined_by=[op_id])

        await self._settle_later(session.id)
        requeued = await kv_update(self.b.sessions, session.id, Session, back)
        if requeued is None or requeued.status != "waiting":
            return
        await self._release(op_id, session.id)
        # The event names the operator it moved off (their pages drop it), like offer_declined.
        mid = f"moved:{session.id}:{session.assignments}"
        await self._trail(session, mid, "session_moved", f"Moved on: {reason}", reason=reason)
        line = self.lines.lines.get(requeued.line_id)
        if line is not None:
            await self._enqueue(line, requeued, requeued.opened_at.timestamp())
            await self.drain(line)

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
        now = time.time()
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
                grace = self.presence_grace(operator_id)
                await schedule(self.js, Timer(kind="presence", target=operator_id, due=now + grace, token=str(now)))
                armed = True
            return msgspec.structs.replace(st, desks=[], disconnected_at=now)

        await kv_update(self.b.operators, operator_id, OperatorState, drop)
        return removed

    def presence_grace(self, operator_id: str) -> float:
        """Seconds an operator with no desk page may stay as they are: the shortest grace of their lines."""
        lines = self.lines.lines_of(operator_id)
        return min((line.queue.presence_grace_seconds for line in lines), default=QueueConfig().presence_grace_seconds)

    async def accept(self, operator_id: str, session_id: str) -> Session:
        acc = await self._account(operator_id)
        session = await self._own_session(operator_id, session_id, take=True)
        return await self._answered(session, f"Accepted by {acc.name}")

    async def _answered(self, session: Session, note: str) -> Session:
        if session.status != "assigned":
            return session
        now = utcnow()
        changed = False

        def mark(s: Session | None) -> Session | None:
            nonlocal changed
            changed = s is not None and s.status == "assigned" and s.operator_id == session.operator_id
            if not changed or s is None:
                return None
            # answered_at stays the first answer (a chat moved on and accepted again was answered
            # already): the sessions API and the statistics' first response agree.
            return msgspec.structs.replace(s, status="answered", answered_at=s.answered_at or now, declined_by=[])

        updated = await kv_update(self.b.sessions, session.id, Session, mark)
        assert updated is not None

        def count(st: OperatorState | None) -> OperatorState | None:
            if st is None or session.id in st.answered:
                return None
            return msgspec.structs.replace(st, answered=[*st.answered, session.id])

        await kv_update(self.b.operators, session.operator_id, OperatorState, count)
        if changed:
            await self._trail(updated, f"answered:{session.id}:{updated.assignments}", "session_answered", note)
            # Where only unanswered chats count, answering frees a place.
            for line in self.lines.lines_of(session.operator_id):
                if line.queue.count == "unanswered":
                    await self.drain(line)
        return updated

    async def reply(
        self,
        operator_id: str,
        session_id: str,
        text: str,
        client_msg_id: str,
        attachments: list[Attachment] | None = None,
        template: TemplateChoice | None = None,
    ) -> tuple[Session, str]:
        acc = await self._account(operator_id)
        text = text.strip()
        if not text and not attachments and template is None:
            raise Refused("invalid", "reply text is empty")
        current, _ = await kv_get(self.b.sessions, session_id, Session)
        if current is None or (current.operator_id != operator_id and operator_id not in current.offered_to):
            current = None  # not theirs: _own_session says so
        filled: TemplateMessage | None = None
        if current is not None and template is not None:
            text, filled = self._template(current, template)
            attachments = []
        now = utcnow()
        if current is not None and filled is None and not window.is_open(current.channel, current.client_last_at, now):
            closed_at = window.closes_at(current.channel, current.client_last_at)
            since = f" at {closed_at:%Y-%m-%d %H:%M} UTC" if closed_at and closed_at.year > 1970 else ""
            raise Refused(
                "window_closed",
                f"the client's 24-hour window closed{since}: WhatsApp delivers only an approved message template"
                " until the client writes again",
            )
        session = await self._own_session(operator_id, session_id, take=True)
        out_id = f"out:{session_id}:{subjects.token(client_msg_id, 'client_msg_id')}"
        await self.fx.send(
            session,
            Outbound(
                id=out_id,
                session_id=session_id,
                channel=session.channel,
                account=session.account,
                chat_id=session.chat_id,
                text=text,
                attachments=list(attachments or []),
                operator_id=operator_id,
                operator_name=acc.name,
                created_at=now,
                template=filled,
            ),
        )
        session = await self._answered(session, f"Answered by {acc.name}")
        touched = await kv_update(self.b.sessions, session_id, Session, lambda s: _touch(s, now, inbound=False))
        if touched is not None:
            session = touched
            await self._arm_idle(session)
        return session, out_id

    def _template(self, session: Session, choice: TemplateChoice) -> tuple[str, TemplateMessage]:
        """The body and the send of an approved template of the chat's account, or Refused saying what is wrong."""
        entry = self.lines.line_for(session.channel, session.account)
        here = (session.channel, session.account)
        declared = next((ch.templates for ch in (entry.channels if entry else []) if (ch.channel, ch.account) == here), [])
        if not declared:
            raise Refused("invalid", f"no message templates are declared for {session.channel}/{session.account}")
        tpl = templates.find(declared, choice.name, choice.language)
        if tpl is None:
            raise Refused("invalid", f"no template {choice.name!r} is declared for {session.channel}/{session.account}")
        try:
            return templates.fill(tpl, choice.params)
        except templates.TemplateError as exc:
            raise Refused("invalid", str(exc)) from None

    async def skip(self, operator_id: str, session_id: str) -> None:
        await self._account(operator_id)
        offered, _ = await kv_get(self.b.sessions, session_id, Session)
        if offered is not None and offered.status == "assigned" and not offered.operator_id and operator_id in offered.offered_to:
            await self._decline_offer(operator_id, offered, "skipped")
            return
        session = await self._own_session(operator_id, session_id)
        if session.status != "assigned":
            raise Refused("conflict", "only an offered chat can be skipped; transfer an answered one")
        await self._pass_on(session, "skipped")

    async def _decline_offer(self, operator_id: str, session: Session, reason: str) -> None:
        """One of several operators declines an offer made to all; when nobody is left, it passes on."""
        assignments = session.assignments

        def drop(s: Session | None) -> Session | None:
            if s is None or s.assignments != assignments or operator_id not in s.offered_to or s.operator_id:
                return None
            return msgspec.structs.replace(
                s, offered_to=[o for o in s.offered_to if o != operator_id], declined_by=[*s.declined_by, operator_id]
            )

        updated = await kv_update(self.b.sessions, session.id, Session, drop)
        await self._withdraw(operator_id, session.id)
        if updated is not None and updated.status == "assigned" and not updated.operator_id and not updated.offered_to:
            await self._pass_on(updated, reason)

    async def transfer(self, operator_id: str, session_id: str, to_operator: str, to_line: str) -> Session:
        acc = await self._account(operator_id)
        session = await self._own_session(operator_id, session_id)
        if bool(to_operator) == bool(to_line):
            raise Refused("invalid", "give exactly one of to_operator or to_line")
        now = utcnow()
        if to_operator:
            return await self._transfer_to_operator(acc, session, to_operator, now)
        target = self.lines.lines.get(to_line)
        if target is None:
            raise Refused("not_found", f"line {to_line!r} does not exist")

        def move(s: Session | None) -> Session | None:
            if s is None or not s.is_open or s.operator_id != operator_id:
                return None
            return msgspec.structs.replace(s, line_id=to_line, status="waiting", operator_id="", assigned_at=None, declined_by=[])

        await self._settle_later(session_id)
        moved = await kv_update(self.b.sessions, session_id, Session, move)
        if moved is None or moved.line_id != to_line or moved.status != "waiting":
            raise Refused("conflict", "the chat changed meanwhile; reload it")
        await self._release(operator_id, session_id)
        await self._trail(
            moved,
            f"transferred-line:{session_id}:{session.assignments}",
            "session_transferred",
            f"{acc.name} transferred the chat to {target.name}",
            reason=f"line {to_line}",
        )
        await self._enqueue(target, moved, moved.opened_at.timestamp())
        await self.drain(target)
        final, _ = await kv_get(self.b.sessions, session_id, Session)
        return final or moved

    async def _transfer_to_operator(self, acc: OperatorAccount, session: Session, to_operator: str, now: datetime) -> Session:
        if to_operator == acc.id:
            raise Refused("invalid", "the chat is already yours")
        target = await self._account(to_operator)
        line = self.lines.lines.get(session.line_id)
        queue = line.queue if line else QueueConfig()
        st, _ = await kv_get(self.b.operators, to_operator, OperatorState)
        if st is None or st.status != "online":
            raise Refused("conflict", f"{target.name} is not online")
        if not await self._claim(to_operator, session.id, queue, now):
            raise Refused("conflict", f"{target.name} has no room for another chat")
        from_status = session.status

        def reoffer(s: Session | None) -> Session | None:
            if s is None or s.operator_id != acc.id or s.status != from_status:
                return None
            return msgspec.structs.replace(s, status="waiting")

        await self._settle_later(session.id)
        if await kv_update(self.b.sessions, session.id, Session, reoffer) is None:
            await self._release(to_operator, session.id)
            raise Refused("conflict", "the chat changed meanwhile; reload it")
        await self._release(acc.id, session.id)

        async def transferred(given: Session) -> None:  # in the transcript before "Offered to ..."
            await self._trail(
                given,
                f"transferred-op:{session.id}:{given.assignments}",
                "session_transferred",
                f"{acc.name} transferred the chat to {target.name}",
                reason=f"operator {to_operator}",
            )

        given = await self._give(
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
        if not {"supervisor", "admin"} & set(acc.roles):
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

        def take(s: Session | None) -> Session | None:
            if s is None or not s.is_open:
                return None
            return msgspec.structs.replace(
                s,
                status="answered",
                operator_id=operator_id,
                offered_to=[],
                declined_by=[],
                assigned_at=s.assigned_at or now,
                answered_at=s.answered_at or now,
                assignments=s.assignments + 1,
                held=False,
            )

        taken = await kv_update(self.b.sessions, session_id, Session, take)
        if taken is None or taken.operator_id != operator_id:
            raise Refused("conflict", "the chat changed meanwhile; reload it")

        def hold(st: OperatorState | None) -> OperatorState:
            cur = st or OperatorState(id=operator_id)
            if session_id in cur.sessions:
                return cur
            return msgspec.structs.replace(cur, sessions=[*cur.sessions, session_id], answered=[*cur.answered, session_id])

        await kv_update(self.b.operators, operator_id, OperatorState, hold)
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

    async def take(self, operator_id: str, session_id: str) -> Session:
        """An operator of the chat's line takes a waiting chat from the queue: it becomes theirs, answered.

        Only an operator in the line's queue, online or away, with room for one more chat
        (``max_chats_per_operator``) may; the room is claimed by compare-and-set
        first, so a take and the distribution never overfill an operator.
        """
        acc = await self._account(operator_id)
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        if session.operator_id == operator_id and session.is_open:
            return session
        line = self.lines.lines.get(session.line_id)
        if line is None or operator_id not in line.queue.operators:
            raise Refused("forbidden", f"{acc.name} is not in the queue of the chat's line: only its operators may take it")
        if session.status != "waiting":
            raise Refused("conflict", "the chat is no longer waiting: someone else has it, or it was closed")
        st, _ = await kv_get(self.b.operators, operator_id, OperatorState)
        if st is None or st.status == "offline":
            raise Refused("conflict", "you are offline: go online (or away) to take chats from the queue")
        now = utcnow()
        # Away counts: someone away picks the one chat they mean to answer, and gets no offers meanwhile.
        if not await self._claim(operator_id, session_id, line.queue, now, any_status=True):
            raise Refused("conflict", f"you have no room for another chat (at most {line.queue.max_chats_per_operator})")

        def grab(s: Session | None) -> Session | None:
            if s is None or s.status != "waiting" or s.line_id != line.id:
                return None
            return msgspec.structs.replace(
                s,
                status="answered",
                operator_id=operator_id,
                offered_to=[],
                declined_by=[],
                assigned_at=now,
                answered_at=s.answered_at or now,
                assignments=s.assignments + 1,
                held=False,
            )

        taken = await kv_update(self.b.sessions, session_id, Session, grab)
        if taken is None or taken.operator_id != operator_id or taken.status != "answered":
            await self._release(operator_id, session_id)
            raise Refused("conflict", "the chat is no longer waiting: someone else has it, or it was closed")

        def answered(cur: OperatorState | None) -> OperatorState | None:
            if cur is None or session_id in cur.answered:
                return None
            return msgspec.structs.replace(cur, answered=[*cur.answered, session_id])

        await kv_update(self.b.operators, operator_id, OperatorState, answered)
        await self._dequeue(line.id, session_id)
        n = taken.assignments
        text = f"Taken from the queue by {acc.name}"
        await self._trail(taken, f"taken:{session_id}:{n}", "session_assigned", text, reason="taken")
        # As when an offer is accepted: every assignment answered has its session_answered (the CRM's responsible
        # follows it; the statistics count the first), also for a chat answered before and moved back to the queue.
        await self._trail(taken, f"answered:{session_id}:{n}", "session_answered", f"Answered by {acc.name}", reason="taken")
        return taken

    async def tag(self, operator_id: str, session_id: str, add: list[str], remove: list[str]) -> Session:
        """Put tags on a conversation and take others off: its operators, the operators of its line, supervisors."""
        acc = await self._account(operator_id)
        try:
            plus = list(dict.fromkeys(tags.normalise(t) for t in add))
            minus = list(dict.fromkeys(tags.normalise(t) for t in remove))
        except tags.BadTag as exc:
            raise Refused("invalid", str(exc)) from None
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        lines = {line.id for line in self.lines.lines_of(operator_id)}
        allowed = (
            bool({"supervisor", "admin"} & set(acc.roles))
            or operator_id in (session.operator_id, session.closed_by)
            or operator_id in session.offered_to
            or bool({session.line_id, session.entry_line_id} & lines)
        )
        if not allowed:
            raise Refused("forbidden", f"{acc.name} may not tag this conversation: it is not on one of their lines")
        try:
            tags.applied(session.tags, plus, minus)
        except tags.BadTag as exc:
            raise Refused("invalid", str(exc)) from None
        before: list[str] = []
        too_many = False

        def change(s: Session | None) -> Session | None:
            nonlocal before, too_many
            too_many = False
            if s is None:
                return None
            before = list(s.tags)
            try:
                after = tags.applied(s.tags, plus, minus)
            except tags.BadTag:
                too_many = True
                return None
            return msgspec.structs.replace(s, tags=after) if after != s.tags else None

        updated = await kv_update(self.b.sessions, session_id, Session, change)
        if updated is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
        if too_many:
            raise Refused("invalid", f"a conversation has at most {tags.MAX_TAGS} tags")
        added = [t for t in updated.tags if t not in before]
        removed = [t for t in before if t not in updated.tags]
        if added or removed:
            parts = [f"added the tag {t}" for t in added] + [f"removed the tag {t}" for t in removed]
            reason = " ".join([*(f"+{t}" for t in added), *(f"-{t}" for t in removed)])
            stamp = hashlib.blake2b(f"{before}|{updated.tags}|{time.time()}".encode(), digest_size=6).hexdigest()
            await self._trail(
                updated, f"tagged:{session_id}:{stamp}", "session_tagged", f"{acc.name} {', '.join(parts)}", reason=reason
            )
        return updated

    async def pin(self, operator_id: str, session_id: str, pinned: bool) -> Session:
        acc = await self._account(operator_id)
        session = await self._own_session(operator_id, session_id)
        updated = await kv_update(
            self.b.sessions,
            session_id,
            Session,
            lambda s: msgspec.structs.replace(s, pinned=pinned) if s is not None and s.pinned != pinned else None,
        )
        if updated is not None and updated.pinned == pinned and session.pinned != pinned:
            text = f"{'Pinned' if pinned else 'Unpinned'} by {acc.name}"
            await self._trail(updated, f"pinned:{session_id}:{time.time()}", "session_pinned", text, reason=str(pinned).lower())
        return updated or session

    async def spam(self, operator_id: str, session_id: str) -> Session:
        await self._account(operator_id)
        session = await self._own_session(operator_id, session_id)

        def flag(c: ClientRecord | None) -> ClientRecord | None:
            return msgspec.structs.replace(c, spam=True) if c is not None and not c.spam else None

        await kv_update(self.b.clients, client_key(session.channel, session.account, session.chat_key), ClientRecord, flag)
        return await self._close(session, closed_by=operator_id, reason="spam")

    async def close(self, operator_id: str, session_id: str) -> Session:
        await self._account(operator_id)
        session = await self._own_session(operator_id, session_id)
        return await self._close(session, closed_by=operator_id, reason="operator")

    async def _close(self, session: Session, *, closed_by: str, reason: str) -> Session:
        """Close the chat, then do what a close entails (see ``_finish_close``).

        A close is many writes; the settle timer finishes it if this process
        dies (or NATS goes away) half way: no client is left pointing at a
        closed chat, no operator holding it, no CRM never told.
        """
        now = utcnow()
        await self._settle_later(session.id)

        def shut(s: Session | None) -> Session | None:
            if s is None or not s.is_open:
                return None
            return msgspec.structs.replace(s, status="closed", closed_at=now, closed_by=closed_by, close_reason=reason)

        closed = await kv_update(self.b.sessions, session.id, Session, shut)
        if closed is None or closed.close_finished:
            return closed or session
        return await self._finish_close(closed)

    async def _finish_close(self, closed: Session) -> Session:
        """Everything that follows a close; each step is idempotent, so a retry completes a close cut short."""
        now = closed.closed_at or utcnow()
        await self._release(closed.operator_id, closed.id)
        for op in closed.offered_to:
            await self._withdraw(op, closed.id)
        await self._forget_open(closed)
        await self._dequeue(closed.line_id, closed.id)
        line = self.lines.lines.get(closed.line_id)
        if line is not None and closed.close_reason != "spam":  # a spammer gets no goodbye
            await self._auto(closed, f"closing:{closed.id}", autoreply.closing(line, closed.client_name), now)
            if line.session.rating and not closed.no_auto_reply:
                await self._auto(closed, f"rating:{closed.id}", autoreply.rating_request(line, closed.client_name), now)
                await self._await_rating(closed)
        what = {"operator": f"closed by {closed.closed_by}", "auto_close": "closed after no activity", "spam": "marked as spam"}
        reason = closed.close_reason
        told = what.get(reason, reason)
        # The event keeps the login (machines read it); the transcript line names the person.
        text = (
            f"Closed by {await self._name(closed.closed_by)}" if reason == "operator" and closed.closed_by else told.capitalize()
        )
        await self._trail(closed, f"closed:{closed.id}", "session_closed", text, reason=told)
        finished = await kv_update(
            self.b.sessions,
            closed.id,
            Session,
            lambda s: msgspec.structs.replace(s, close_finished=True) if s is not None and not s.close_finished else None,
        )
        if line is not None:
            await self.drain(line)
        return finished or closed

    async def _await_rating(self, session: Session) -> None:
        """The client's next message, if it is a mark 1-5 within a day, rates this session."""
        until = time.time() + RATING_WINDOW

        def expect(c: ClientRecord | None) -> ClientRecord | None:
            return msgspec.structs.replace(c, rating_for=session.id, rating_until=until) if c is not None else None

        await kv_update(self.b.clients, client_key(session.channel, session.account, session.chat_key), ClientRecord, expect)

    async def _rate(self, session_id: str, rating: int, msg: Inbound) -> None:
        """Record the client's mark on the closed session; it opens no new conversation."""
        rated = await kv_update(
            self.b.sessions,
            session_id,
            Session,
            lambda s: msgspec.structs.replace(s, rating=rating) if s is not None and s.rating != rating else None,
        )
        if rated is None:
            return
        await self.fx.history(
            HistoryEntry(
                id=msg.id,
                session_id=session_id,
                direction="in",
                text=msg.text,
                author_id=msg.user_id,
                author_name=msg.profile.name,
                at=msg.received_at,
            )
        )
        await self._trail(rated, f"rated:{session_id}", "session_rated", f"Rated {rating} of 5 by the client", reason=str(rating))

    async def _forget_open(self, session: Session) -> None:
        entry = session.entry_line_id or session.line_id

        def forget(c: ClientRecord | None) -> ClientRecord | None:
            if c is None or c.open_sessions.get(entry) != session.id:
                return None
            return msgspec.structs.replace(c, open_sessions={k: v for k, v in c.open_sessions.items() if k != entry})

        await kv_update(self.b.clients, client_key(session.channel, session.account, session.chat_key), ClientRecord, forget)


def _without(st: OperatorState, stale: set[str]) -> OperatorState:
    return msgspec.structs.replace(
        st, sessions=[x for x in st.sessions if x not in stale], answered=[x for x in st.answered if x not in stale]
    )


def _with_offer(st: OperatorState | None, sid: str) -> OperatorState | None:
    return msgspec.structs.replace(st, offers=[*st.offers, sid]) if st is not None and sid not in st.offers else None


def _without_offer(st: OperatorState | None, sid: str) -> OperatorState | None:
    return msgspec.structs.replace(st, offers=[o for o in st.offers if o != sid]) if st is not None and sid in st.offers else None


_RATING = re.compile(r"^\s*([1-5])\s*(?:/\s*5|of\s*5|\*+|⭐+)?\s*[.!]?\s*$", re.IGNORECASE)


def _rating_in(text: str) -> int | None:
    """A reply that is just a mark from 1 to 5 ("5", "4/5", "3 of 5", "5!"), else None."""
    m = _RATING.match(text)
    return int(m.group(1)) if m else None


def _client_time(msg: Inbound) -> datetime:
    """When the client wrote: the channel's own time when it says, never later than we got it."""
    return min(msg.sent_at, msg.received_at) if msg.sent_at is not None else msg.received_at


def _touch(
    s: Session | None,
    now: datetime,
    *,
    inbound: bool,
    rule: flood.FloodRule | None = None,
    client_at: datetime | None = None,
) -> Session | None:
    if s is None:
        return None
    if client_at is not None and (s.client_last_at is None or client_at > s.client_last_at):
        s = msgspec.structs.replace(s, client_last_at=client_at)
    if rule is None or not inbound:
        return msgspec.structs.replace(s, last_message_at=now, messages_in=s.messages_in + (1 if inbound else 0))
    # A held message (beyond the flood limit) is not counted in messages_in: the operator's unread count stays put.
    c = flood.count(rule, s.flood_window, s.flood_count, now.timestamp())
    return msgspec.structs.replace(
        s,
        last_message_at=now,
        messages_in=s.messages_in + (0 if c.held(rule) else 1),
        flood_window=c.window_start,
        flood_count=c.count,
        flagged="flood" if c.first_held(rule) else s.flagged,
    )


def _merge_profile(old: ClientProfile, new: ClientProfile) -> ClientProfile:
    """Newer non-empty profile fields win; nothing known is forgotten."""
    merged = {f: getattr(new, f) or getattr(old, f) for f in old.__struct_fields__}
    return msgspec.structs.replace(old, **merged)
