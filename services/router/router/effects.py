"""Publishing what the router decided: transcript, events, outbound messages.

Every publish carries a deterministic Nats-Msg-Id, so redoing the work after
a crash publishes nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any, NamedTuple

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from prometheus_client import Counter

from openlines import bus, subjects
from openlines.envelopes import MSG_ID_HEADER, HistoryEntry, Outbound, SessionEvent, encode, utcnow
from openlines.state import Session

EVENTS = Counter("openlines_router_events_total", "Session events published", ["kind"])
OUTBOUND = Counter("openlines_router_outbound_total", "Outbound messages published", ["channel", "auto"])

# The longest a block waits for its acknowledgements, unless the router's OPENLINES_NATS_REQUEST_TIMEOUT says:
# what any JetStream request waits (decision 035). A publish written to a stream's leader that just died
# is never answered; waiting longer only holds the message in hand up.
TOGETHER_TIMEOUT = 2.0


class _Sent(NamedTuple):
    """A publish of a ``together`` block: its acknowledgement to come, and the message, to try it again."""

    ack: asyncio.Future[Any]
    subject: str
    payload: bytes
    headers: dict[str, str]
    stream: str | None


# The publishes of the block ``Effects.together`` runs in this task (each asyncio task has its own context).
_TOGETHER: ContextVar[list[_Sent] | None] = ContextVar("router_effects_together", default=None)


class Effects:
    def __init__(self, js: JetStreamContext, nc: NATS, ack_timeout: float = TOGETHER_TIMEOUT) -> None:
        self.js = js
        # The acknowledgements of ``together`` blocks: the context's own inbox (decision 042), one of its own
        # only for a context that has none.
        self.acks = bus.answers_of(js, nc) or bus.AckInbox(nc)
        self.ack_timeout = ack_timeout

    async def _publish(self, subject: str, msg_id: str, obj: msgspec.Struct) -> None:
        await self._send(subject, encode(obj), {MSG_ID_HEADER: msg_id})

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str], stream: str | None = None) -> None:
        """Publish and wait for the acknowledgement, or in a ``together`` block write it now and leave the
        acknowledgement to the block's end (no task and no timer per publish).

        A publish JetStream answers with 10158 (the same id being stored by another publish at that moment:
        a command asked again while its first try is still at work, two replicas redoing one step) is tried
        again within the command's time (``bus.publish_stored``), never failed.
        """
        pending = _TOGETHER.get()
        if pending is None:
            await bus.publish_stored(self.js, subject, payload, headers=headers, stream=stream)
        else:
            ack = await self.acks.publish(subject, payload, headers=headers, stream=stream)
            pending.append(_Sent(ack, subject, payload, headers, stream))

    @contextlib.asynccontextmanager
    async def together(self) -> AsyncIterator[None]:
        """Publishes made in the block go out at once and are all acknowledged when it ends.

        One round trip for the trail of a step (its event, its transcript lines, an
        auto-reply) instead of one each. The order is kept: they are written to the
        one connection in the order they were made, and the server stores them so.
        The block ends only when every one is acknowledged (it raises the first
        failure), so what follows it - the write that commits the step - never
        comes before them; a failure is retried, and the ids make a redo harmless.
        One answered with 10158 is published again (and waited for) at the end.
        """
        pending: list[_Sent] = []
        token = _TOGETHER.set(pending)
        failed = True
        try:
            yield
            failed = False
        finally:
            _TOGETHER.reset(token)
            errors: list[BaseException] = []
            again: list[_Sent] = []
            if pending:
                # One timer for the block: an answer lost with the connection never ends its future.
                done, _ = await asyncio.wait([p.ack for p in pending], timeout=self.ack_timeout)
                for sent in pending:
                    fut = sent.ack
                    if fut not in done or fut.cancelled():  # no answer in time, or dropped with the connection
                        fut.cancel()
                        errors.append(NatsTimeout())
                    elif (error := fut.exception()) is not None:
                        if bus.storing_already(error):
                            again.append(sent)
                        else:
                            errors.append(error)
            if errors and not failed:
                raise errors[0]
            if not failed:
                for sent in again:
                    await bus.publish_stored(self.js, sent.subject, sent.payload, headers=sent.headers, stream=sent.stream)

    async def event(self, event_id: str, kind: str, session: Session | None = None, **fields: str) -> None:
        base: dict[str, str] = {}
        if session is not None:
            base = {
                "session_id": session.id,
                "line_id": session.line_id,
                "client_id": session.client_id,
                "operator_id": session.operator_id,
                "channel": session.channel,
                "account": session.account,
                "chat_id": session.chat_id,
            }
        base.update(fields)
        evt = msgspec.convert({"id": event_id, "kind": kind, "at": utcnow(), **base}, SessionEvent)
        subject, payload, headers = bus.event_message(evt)
        await self._send(subject, payload, headers, subjects.STREAM_EVT)
        EVENTS.labels(kind).inc()

    async def history(self, entry: HistoryEntry) -> None:
        await self._publish(subjects.history(entry.session_id), entry.id, entry)

    async def send(self, session: Session, out: Outbound) -> None:
        """Queue a message for the client's channel gateway and record it in the transcript."""
        subject = subjects.outbound(session.channel, session.account, session.chat_key)
        await self._publish(subject, out.id, out)
        await self.history(
            HistoryEntry(
                id=out.id,
                session_id=session.id,
                direction="out",
                text=out.text,
                attachments=out.attachments,
                author_id=out.operator_id or "auto",
                author_name=out.operator_name,
                at=out.created_at,
            )
        )
        OUTBOUND.labels(session.channel, str(out.auto).lower()).inc()
