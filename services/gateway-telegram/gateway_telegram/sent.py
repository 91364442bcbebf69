"""What has been delivered: the ``ol-tg-sent`` KV bucket (this service's own).

One key per outbound message (a digest of its id; ids contain ``:``, which
KV keys do not allow), written before each part is sent (``attempting``) and
after it was delivered, before the JetStream ack, so a redelivered outbound
resumes after the last part that Telegram accepted instead of sending it again.

The Bot API has no idempotency key: a gateway killed after Telegram accepted a
part but before recording it cannot know whether the client got it. It sends
the part again (a reply is never lost) and counts that resend in ``uncertain``
and in the ``openlines_telegram_uncertain_resends_total`` metric, so a double
is never silent.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import Counter

from openlines import bus, subjects
from openlines.lanes import PartsSent, SentLog

UNCERTAIN_RESENDS = Counter(
    "openlines_telegram_uncertain_resends_total",
    "Parts sent again after a crash mid-send (the client may see them twice)",
    ["account"],
)

# Would live in openlines.subjects (the one place names are spelled); kept here until shared/ has it.
KV_TELEGRAM_SENT = subjects.KV_TELEGRAM_SENT


class SentRecord(PartsSent, kw_only=True, omit_defaults=True):
    message_ids: list[int] = msgspec.field(default_factory=list)  # Telegram message ids of the delivered parts

    def accepted(self, ident: int, last: bool) -> SentRecord:
        return msgspec.structs.replace(self, parts=self.parts + 1, message_ids=[*self.message_ids, ident], done=last)


async def open_bucket(js: JetStreamContext, *, ttl: float, replicas: int) -> KeyValue:
    return await bus.own_bucket(js, KV_TELEGRAM_SENT, ttl=ttl, replicas=replicas)


class Sent(SentLog[SentRecord]):
    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, SentRecord)
