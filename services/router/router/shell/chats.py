"""An operator's commands on a chat they hold or are offered: accept, reply, skip, pin, spam, close."""

from __future__ import annotations

from datetime import datetime

from openlines import subjects, templates, window
from openlines.bus import kv_get, kv_update
from openlines.commands import TemplateChoice
from openlines.envelopes import Attachment, Outbound, TemplateMessage, utcnow
from openlines.state import ClientRecord, OperatorState, Session, client_key
from router.core import capacity, client
from router.core import session as transition
from router.shell.answers import Answers
from router.shell.base import Part, Refused, Shared
from router.shell.closing import Closing
from router.shell.offering import Offering


class Chats(Part):
    def __init__(self, shared: Shared, offering: Offering, closing: Closing, answers: Answers) -> None:
        super().__init__(shared)
        self.offering = offering
        self.answers = answers
        self.closing = closing

    async def accept(self, operator_id: str, session_id: str) -> Session:
        acc = await self._account(operator_id)
        now = utcnow()
        session = await self.answers.own_session(operator_id, session_id, now, take=True)
        return await self._answered(session, f"Accepted by {acc.name}", now)

    async def _answered(self, session: Session, note: str, now: datetime) -> Session:
        if session.status != "assigned":
            return session
        op_id = session.operator_id
        changed = False

        def mark(s: Session | None) -> Session | None:
            nonlocal changed
            updated = transition.answered(s, op_id, now)
            changed = updated is not None
            return updated

        updated = await kv_update(self.b.sessions, session.id, Session, mark)
        assert updated is not None
        await kv_update(self.b.operators, op_id, OperatorState, lambda st: capacity.answered(st, session.id) if st else None)
        if changed:
            await self._trail(updated, f"answered:{session.id}:{updated.assignments}", "session_answered", note)
            # Where only unanswered chats count, answering frees a place.
            for line in self.lines.lines_of(op_id):
                if line.queue.count == "unanswered":
                    await self.offering.drain(line, now)
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
            current = None  # not theirs: own_session says so
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
        session = await self.answers.own_session(operator_id, session_id, now, take=True)
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
        session = await self._answered(session, f"Answered by {acc.name}", now)
        touched = await kv_update(self.b.sessions, session_id, Session, lambda s: transition.touched(s, now, inbound=False))
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
        now = utcnow()
        offered, _ = await kv_get(self.b.sessions, session_id, Session)
        if offered is not None and offered.status == "assigned" and not offered.operator_id and operator_id in offered.offered_to:
            await self.answers.decline_offer(operator_id, offered, "skipped", now)
            return
        session = await self.answers.own_session(operator_id, session_id, now)
        if session.status != "assigned":
            raise Refused("conflict", "only an offered chat can be skipped; transfer an answered one")
        await self.answers.pass_on(session, "skipped", now)

    async def pin(self, operator_id: str, session_id: str, pinned: bool) -> Session:
        acc = await self._account(operator_id)
        now = utcnow()
        session = await self.answers.own_session(operator_id, session_id, now)
        updated = await kv_update(self.b.sessions, session_id, Session, lambda s: transition.pinned(s, pinned))
        if updated is not None and updated.pinned == pinned and session.pinned != pinned:
            text = f"{'Pinned' if pinned else 'Unpinned'} by {acc.name}"
            pid = f"pinned:{session_id}:{now.timestamp()}"
            await self._trail(updated, pid, "session_pinned", text, reason=str(pinned).lower())
        return updated or session

    async def spam(self, operator_id: str, session_id: str) -> Session:
        await self._account(operator_id)
        now = utcnow()
        done = await self.closing.repeated(operator_id, session_id, "spam", now)
        if done is not None:
            return done
        session = await self.answers.own_session(operator_id, session_id, now)
        key = client_key(session.channel, session.account, session.chat_key)
        await kv_update(self.b.clients, key, ClientRecord, client.marked_spam)
        return await self.closing.close(session, now, closed_by=operator_id, reason="spam")

    async def close(self, operator_id: str, session_id: str) -> Session:
        await self._account(operator_id)
        now = utcnow()
        done = await self.closing.repeated(operator_id, session_id, "operator", now)
        if done is not None:
            return done
        session = await self.answers.own_session(operator_id, session_id, now)
        return await self.closing.close(session, now, closed_by=operator_id, reason="operator")
