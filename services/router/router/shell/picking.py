"""An operator picking a chat from the queue (take), tagging conversations and writing private notes in them."""

from __future__ import annotations

import hashlib
import re
import time

import msgspec

from openlines import tags
from openlines.bus import kv_get, kv_update
from openlines.envelopes import HistoryEntry, utcnow
from openlines.state import OperatorState, Session
from router.core import session as transition
from router.shell.base import Part, Refused, Shared
from router.shell.capacity import Capacity

MAX_NOTE = 4000
MENTION = re.compile(r"(?<![\w@])@([A-Za-z0-9_.-]{1,64})")


class Picking(Part):
    def __init__(self, shared: Shared, cap: Capacity) -> None:
        super().__init__(shared)
        self.cap = cap

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
        if not await self.cap.claim(operator_id, session_id, line.queue, now, any_status=True):
            raise Refused("conflict", f"you have no room for another chat (at most {line.queue.max_chats_per_operator})")
        line_id = line.id
        taken = await kv_update(
            self.b.sessions, session_id, Session, lambda s: transition.taken_from_queue(s, operator_id, line_id, now)
        )
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
        session = await self._writable(operator_id, acc, session_id, "tag this conversation")
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

    async def note(self, operator_id: str, session_id: str, text: str, client_msg_id: str) -> Session:
        """A private note in the conversation's transcript: colleagues read it, the client never gets it.

        ``@login`` names colleagues: the note carries them (``mentions``) and the desk tells them.
        """
        acc = await self._account(operator_id)
        text = text.strip()
        if not text:
            raise Refused("invalid", "a note needs text")
        if len(text) > MAX_NOTE:
            raise Refused("invalid", f"a note is at most {MAX_NOTE} characters")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", client_msg_id):
            raise Refused("invalid", "client_msg_id must be 1-64 of A-Z a-z 0-9 _ -")
        session = await self._writable(operator_id, acc, session_id, "write in this conversation")
        mentions: list[str] = []
        for login in dict.fromkeys(MENTION.findall(text)):
            if login == operator_id or len(mentions) >= 10:
                continue
            try:
                colleague = await self._account(login)
            except Refused:
                continue  # "@home" or a typo: no one to tell
            # Only someone who may open the conversation is told of it.
            their_lines = {line.id for line in self.lines.lines_of(login)}
            if transition.may_annotate(session, login, list(colleague.roles), their_lines):
                mentions.append(login)
        await self.fx.history(
            HistoryEntry(
                id=f"note:{session_id}:{operator_id}:{client_msg_id}",
                session_id=session_id,
                direction="system",
                note=True,
                text=text,
                author_id=operator_id,
                author_name=acc.name,
                mentions=mentions,
                at=utcnow(),
            )
        )
        return session
