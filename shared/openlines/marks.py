"""Delivery marks: what a channel said about one outbound message, on ``ol.mark.<session>`` (stream ``OL_MARK``).

A mark's id is ``<message id>:<part>:<status>`` and doubles as its Nats-Msg-Id,
so a status the channel reports twice, or a send retried after a crash, is
stored once. Whoever shows marks keeps the strongest per message
(:data:`openlines.envelopes.MARK_STATUSES`), ``failed`` above all.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from nats.js import JetStreamContext

from openlines import bus, subjects
from openlines.envelopes import MSG_ID_HEADER, DeliveryMark, MarkStatus, Outbound, SessionEvent, encode, utcnow


async def publish_mark(
    js: JetStreamContext,
    *,
    channel: str,
    session_id: str,
    message_id: str,
    status: MarkStatus,
    at: datetime,
    account: str,
    part: int = 0,
    reason: str = "",
    timeout: float = 5.0,
) -> None:
    """Stores one mark (acknowledged by the stream); raises when NATS does not confirm it in ``timeout``."""
    mark = DeliveryMark(
        id=f"{message_id}:{part}:{status}",
        session_id=session_id,
        message_id=message_id,
        part=part,
        status=status,
        at=at,
        channel=channel,
        account=account,
        reason=reason[:1000],
    )
    await asyncio.wait_for(
        js.publish(subjects.mark(session_id), encode(mark), stream=subjects.STREAM_MARK, headers={MSG_ID_HEADER: mark.id}),
        timeout=timeout,
    )


async def publish_delivery_failed(
    js: JetStreamContext,
    *,
    channel: str,
    session_id: str,
    message_id: str,
    account: str,
    chat_id: str,
    reason: str,
    operator_id: str = "",
    event_id: str = "",
    timeout: float = 5.0,
) -> datetime:
    """The ``delivery_failed`` event alone (id ``delivery_failed:<message id>`` unless given); when it happened."""
    evt = SessionEvent(
        id=event_id or f"delivery_failed:{message_id}",
        kind="delivery_failed",
        at=utcnow(),
        session_id=session_id,
        channel=channel,
        account=account,
        chat_id=chat_id,
        operator_id=operator_id,
        reason=reason[:1000],
    )
    await bus.publish_event(js, evt, timeout=timeout)
    return evt.at


async def report_failed(
    js: JetStreamContext,
    *,
    channel: str,
    session_id: str,
    message_id: str,
    account: str,
    chat_id: str,
    reason: str,
    operator_id: str = "",
    event_id: str = "",
    timeout: float = 5.0,
) -> None:
    """A message the channel will never deliver: the ``delivery_failed`` event, then a failed mark under the message.

    The event is the fact for statistics and the CRM; the mark is what the
    operator sees under their message ("Not delivered - <reason>"). Both ids are
    deterministic, so a retry after a crash between the two stores neither twice.
    """
    at = await publish_delivery_failed(
        js,
        channel=channel,
        session_id=session_id,
        message_id=message_id,
        account=account,
        chat_id=chat_id,
        reason=reason,
        operator_id=operator_id,
        event_id=event_id,
        timeout=timeout,
    )
    if session_id:
        await publish_mark(
            js,
            channel=channel,
            session_id=session_id,
            message_id=message_id,
            status="failed",
            at=at,
            account=account,
            reason=reason,
            timeout=timeout,
        )


async def outbound_failed(
    js: JetStreamContext,
    out: Outbound,
    *,
    channel: str,
    reason: str,
    account: str = "",
    delivered: bool = False,
    event_id: str = "",
    timeout: float = 5.0,
) -> None:
    """An operator's message the channel did not deliver whole, told from the message itself.

    ``delivered``: it went out, but without some of its files - the
    ``delivery_failed`` event alone; otherwise also the failed mark under it
    (:func:`report_failed`). ``account`` when the gateway knows it better than
    the message does.
    """
    report = publish_delivery_failed if delivered else report_failed
    await report(
        js,
        channel=channel,
        session_id=out.session_id,
        message_id=out.id,
        account=account or out.account,
        chat_id=out.chat_id,
        reason=reason,
        operator_id=out.operator_id,
        event_id=event_id,
        timeout=timeout,
    )
