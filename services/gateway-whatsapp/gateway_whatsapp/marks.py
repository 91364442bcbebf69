"""What the operator sees of a message's fate: delivery marks on ``ol.mark.<session>`` and ``delivery_failed`` events.

Both come from the status callbacks (sent, delivered, read, failed) and from
sends the gateway gave up. Ids are deterministic, so a callback WhatsApp sends
again, or a send retried after a crash, stores nothing twice.
"""

from __future__ import annotations

from datetime import datetime

from nats.js import JetStreamContext

from openlines import marks
from openlines.envelopes import MarkStatus

CHANNEL = "whatsapp"


async def publish_mark(
    js: JetStreamContext,
    *,
    session_id: str,
    message_id: str,
    part: int,
    status: MarkStatus,
    at: datetime,
    account: str,
    reason: str = "",
    timeout: float = 5.0,
) -> None:
    await marks.publish_mark(
        js,
        channel=CHANNEL,
        session_id=session_id,
        message_id=message_id,
        part=part,
        status=status,
        at=at,
        account=account,
        reason=reason,
        timeout=timeout,
    )


async def publish_failed(
    js: JetStreamContext, *, session_id: str, message_id: str, account: str, chat_id: str, reason: str, timeout: float = 5.0
) -> None:
    """``delivery_failed`` on ``ol.evt.delivery_failed`` (id ``delivery_failed:<outbound id>``)."""
    await marks.publish_delivery_failed(
        js,
        channel=CHANNEL,
        session_id=session_id,
        message_id=message_id,
        account=account,
        chat_id=chat_id,
        reason=reason,
        timeout=timeout,
    )
