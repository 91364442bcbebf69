"""The imperative shell of the router: load state, ask the core, apply the result.

All state lives in KV and is changed by compare-and-set, so the same work can
be redone after a crash (inbound redelivery, command retry) without doubling
anything: session ids and message ids are derived from the triggering id.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError

from openlines import subjects
from openlines.bus import Buckets, kv_get, kv_update
from openlines.envelopes import ClientProfile, HistoryEntry, Inbound, Outbound, utcnow
from openlines.lines import LineConfig
from openlines.state import (
    RECENT_IDS_KEPT,
    ClientRecord,
    OperatorAccount,
    OperatorState,
    OperatorStatus,
    QueuedChat,
    Session,
    WaitingQueue,
    client_key,
    queue_key,
)
from router.core import autoreply, distribution
from router.core import queue as waitq
from router.effects import Effects
from router.lines_cache import LinesCache

log = logging.getLogger("router.engine")


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


class Engine:
    def __init__(self, js: JetStreamContext, buckets: Buckets, lines: LinesCache) -> None:
        self.js = js
        self.b = buckets
        self.lines = lines
        self.fx = Effects(js)

    # ------------------------------------------------------------------ inbound

    async def handle_inbound(self, msg: Inbound) -> None:
        line = self.lines.line_for(msg.channel, msg.account)
        if line is None:
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

        session = await self._open_session(msg, line, client, ck)
        now = utcnow()
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
            )
        )
        await kv_update(self.b.sessions, session.id, Session, lambda s: _touch(s, now))

        def remember(cur: ClientRecord | None) -> ClientRecord:
            rec = cur or ClientRecord(
                client_id="c" + _short_hash(msg.channel, msg.account, msg.chat_id),
                channel=msg.channel,
                account=msg.account,
                chat_id=msg.chat_id,
            )
            opened = rec.open_sessions.get(line.id) != session.id
            return msgspec.structs.replace(
                rec,
                profile=_merge_profile(rec.profile, msg.profile),
                open_sessions={**rec.open_sessions, line.id: session.id},
                recent_msg_ids=[*rec.recent_msg_ids, msg.id][-RECENT_IDS_KEPT:],
                sessions_total=rec.sessions_total + (1 if opened else 0),
            )

        await kv_update(self.b.clients, ckey, ClientRecord, remember)

    async def _open_session(self, msg: Inbound, line: LineConfig, client: ClientRecord | None, ck: str) -> Session:
        """The client's open session on this line, or a new one (queued, offered, welcomed)."""
        if client is not None:
            sid = client.open_sessions.get(line.id)
            if sid:
                current, _ = await kv_get(self.b.sessions, sid, Session)
                if current is not None and current.is_open:
                    return current
        sid = session_id_for(msg.id, line.id)
        fresh = Session(
            id=sid,
            line_id=line.id,
            client_id=client.client_id if client else "c" + _short_hash(msg.channel, msg.account, msg.chat_id),
            channel=msg.channel,
            account=msg.account,
            chat_id=msg.chat_id,
            chat_key=ck,
            client_name=msg.profile.name or (client.profile.name if client else ""),
            opened_at=msg.received_at,
        )

        def create(cur: Session | None) -> Session | None:
            return fresh if cur is None else None

        session = await kv_update(self.b.sessions, sid, Session, create)
        assert session is not None
        await self.fx.event(f"opened:{sid}", "session_opened", session)
        text = autoreply.welcome(line, session.client_name)
        if text:
            await self.fx.send(
                session,
                Outbound(
                    id=f"welcome:{sid}",
                    session_id=sid,
                    channel=session.channel,
                    account=session.account,
                    chat_id=session.chat_id,
                    text=text,
                    auto=True,
                    created_at=msg.received_at,
                ),
            )
        if session.status == "waiting":
            await self._enqueue(line, session, session.opened_at.timestamp())
            await self.drain(line)
            after, _ = await kv_get(self.b.sessions, sid, Session)
            if after is not None:
                session = after
            if session.status == "waiting":
                await self.fx.event(f"waiting:{sid}:{session.assignments}", "session_waiting", session)
        return session

    # --------------------------------------------------------------- distribution

    async def _views(self, line: LineConfig) -> list[distribution.OperatorView]:
        views: list[distribution.OperatorView] = []
        for op_id in line.queue.operators:
            st, _ = await kv_get(self.b.operators, op_id, OperatorState)
            if st is None:
                continue
            views.append(
                distribution.OperatorView(
                    id=op_id, status=st.status, open_chats=len(st.sessions), last_assigned_at=st.last_assigned_at
                )
            )
        return views

    async def _claim(self, op_id: str, sid: str, line: LineConfig, now: datetime) -> bool:
        """Reserve capacity on an operator by compare-and-set; False if they can no longer take it."""
        for _ in range(20):
            st, rev = await kv_get(self.b.operators, op_id, OperatorState)
            if st is None or rev is None:
                return False
            if sid in st.sessions:
                return True
            if st.status != "online" and line.queue.skip_offline:
                return False
            if len(st.sessions) >= line.queue.max_chats_per_operator:
                return False
            new = msgspec.structs.replace(st, sessions=[*st.sessions, sid], last_assigned_at=now.timestamp())
            try:
                await self.b.operators.update(op_id, msgspec.json.encode(new), last=rev)
                return True
            except (KeyWrongLastSequenceError, BadRequestError):
                continue
        return False

    async def _release(self, op_id: str, sid: str) -> None:
        def drop(st: OperatorState | None) -> OperatorState | None:
            if st is None or sid not in st.sessions:
                return None
            return msgspec.structs.replace(st, sessions=[s for s in st.sessions if s != sid])

        await kv_update(self.b.operators, op_id, OperatorState, drop)

    async def _enqueue(self, line: LineConfig, session: Session, since: float) -> None:
        chat = QueuedChat(session_id=session.id, since=since)

        def add(q: WaitingQueue | None) -> WaitingQueue | None:
            return waitq.enqueue(q or WaitingQueue(), chat)

        await kv_update(self.b.sessions, queue_key(line.id), WaitingQueue, add)

    async def _dequeue(self, line_id: str, sid: str) -> None:
        def rm(q: WaitingQueue | None) -> WaitingQueue | None:
            return waitq.remove(q, sid) if q is not None else None

        await kv_update(self.b.sessions, queue_key(line_id), WaitingQueue, rm)

    async def drain(self, line: LineConfig) -> None:
        """Offer waiting chats of a line, oldest first, while operators have room."""
        while True:
            q, _ = await kv_get(self.b.sessions, queue_key(line.id), WaitingQueue)
            if q is None or not q.chats:
                return
            head = q.chats[0]
            session, _ = await kv_get(self.b.sessions, head.session_id, Session)
            if session is None or session.status != "waiting":
                await self._dequeue(line.id, head.session_id)
                continue
            assigned = await self._assign(line, session)
            if assigned is None:
                return
            await self._dequeue(line.id, head.session_id)

    async def _assign(self, line: LineConfig, session: Session, exclude: frozenset[str] = frozenset()) -> Session | None:
        """Give a waiting chat to an operator, or None if nobody can take it now."""
        now = utcnow()
        for _ in range(10):
            op_id = distribution.pick(line.queue, await self._views(line), exclude)
            if op_id is None:
                return None
            if not await self._claim(op_id, session.id, line, now):
                continue  # their state changed under us: decide again on fresh state
            chosen = op_id

            def give(s: Session | None, chosen: str = chosen) -> Session | None:
                if s is None or s.status != "waiting":
                    return None
                return msgspec.structs.replace(
                    s, status="assigned", operator_id=chosen, assigned_at=now, assignments=s.assignments + 1
                )

            updated = await kv_update(self.b.sessions, session.id, Session, give)
            if updated is None or updated.operator_id != chosen or updated.status != "assigned":
                await self._release(chosen, session.id)  # closed or taken meanwhile
                return None
            await self.fx.event(f"assigned:{session.id}:{updated.assignments}", "session_assigned", updated)
            log.info("chat assigned", extra={"session": session.id, "line": line.id, "operator": chosen})
            return updated
        return None

    # ------------------------------------------------------------------ commands

    async def _account(self, operator_id: str) -> OperatorAccount:
        acc, _ = await kv_get(self.b.accounts, operator_id, OperatorAccount)
        if acc is None:
            raise Refused("not_found", f"operator {operator_id!r} does not exist")
        if "openlines" not in acc.permissions:
            raise Refused("forbidden", f"operator {operator_id!r} lacks the 'openlines' permission")
        return acc

    async def _own_session(self, operator_id: str, session_id: str) -> Session:
        session, _ = await kv_get(self.b.sessions, session_id, Session)
        if session is None:
            raise Refused("not_found", f"session {session_id!r} does not exist")
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
        """An absent operator keeps no unanswered chat: each goes back to the line's queue at once."""
        for sid in list(state.sessions):
            session, _ = await kv_get(self.b.sessions, sid, Session)
            if session is None or session.status != "assigned" or session.operator_id != operator_id:
                continue

            def back(s: Session | None) -> Session | None:
                if s is None or s.status != "assigned" or s.operator_id != operator_id:
                    return None
                return msgspec.structs.replace(s, status="waiting", operator_id="", assigned_at=None)

            requeued = await kv_update(self.b.sessions, sid, Session, back)
            await self._release(operator_id, sid)
            line = self.lines.lines.get(session.line_id)
            if requeued is None or line is None or requeued.status != "waiting":
                continue
            await self._enqueue(line, requeued, session.opened_at.timestamp())
            await self.fx.event(f"waiting:{sid}:{requeued.assignments}", "session_waiting", requeued, reason="operator away")
            await self.drain(line)

    async def accept(self, operator_id: str, session_id: str) -> Session:
        await self._account(operator_id)
        session = await self._own_session(operator_id, session_id)
        return await self._answered(session)

    async def _answered(self, session: Session) -> Session:
        if session.status != "assigned":
            return session
        now = utcnow()

        def mark(s: Session | None) -> Session | None:
            if s is None or s.status != "assigned" or s.operator_id != session.operator_id:
                return None
            return msgspec.structs.replace(s, status="answered", answered_at=now)

        updated = await kv_update(self.b.sessions, session.id, Session, mark)
        assert updated is not None
        if updated.status == "answered" and updated.answered_at == now:
            await self.fx.event(f"answered:{session.id}", "session_answered", updated)
        return updated

    async def reply(self, operator_id: str, session_id: str, text: str, client_msg_id: str) -> tuple[Session, str]:
        acc = await self._account(operator_id)
        text = text.strip()
        if not text:
            raise Refused("invalid", "reply text is empty")
        session = await self._own_session(operator_id, session_id)
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
                operator_id=operator_id,
                operator_name=acc.name,
                created_at=utcnow(),
            ),
        )
        session = await self._answered(session)
        return session, out_id

    async def close(self, operator_id: str, session_id: str) -> Session:
        await self._account(operator_id)
        await self._own_session(operator_id, session_id)
        now = utcnow()

        def shut(s: Session | None) -> Session | None:
            if s is None or not s.is_open:
                return None
            return msgspec.structs.replace(s, status="closed", closed_at=now, closed_by=operator_id)

        closed = await kv_update(self.b.sessions, session_id, Session, shut)
        assert closed is not None
        await self._release(operator_id, session_id)
        await self._forget_open(closed)
        line = self.lines.lines.get(closed.line_id)
        if line is not None:
            text = autoreply.closing(line, closed.client_name)
            if text:
                await self.fx.send(
                    closed,
                    Outbound(
                        id=f"closing:{session_id}",
                        session_id=session_id,
                        channel=closed.channel,
                        account=closed.account,
                        chat_id=closed.chat_id,
                        text=text,
                        auto=True,
                        created_at=now,
                    ),
                )
        await self.fx.event(f"closed:{session_id}", "session_closed", closed, reason=f"closed by {operator_id}")
        if line is not None:
            await self.drain(line)
        return closed

    async def _forget_open(self, session: Session) -> None:
        def forget(c: ClientRecord | None) -> ClientRecord | None:
            if c is None or c.open_sessions.get(session.line_id) != session.id:
                return None
            rest = {k: v for k, v in c.open_sessions.items() if k != session.line_id}
            return msgspec.structs.replace(c, open_sessions=rest)

        await kv_update(self.b.clients, client_key(session.channel, session.account, session.chat_key), ClientRecord, forget)


def _touch(s: Session | None, now: datetime) -> Session | None:
    if s is None:
        return None
    return msgspec.structs.replace(s, last_message_at=now)


def _merge_profile(old: ClientProfile, new: ClientProfile) -> ClientProfile:
    """Newer non-empty profile fields win; nothing known is forgotten."""
    merged = {f: getattr(new, f) or getattr(old, f) for f in old.__struct_fields__}
    return msgspec.structs.replace(old, **merged)
