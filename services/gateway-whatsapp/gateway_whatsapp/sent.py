"""What was sent of each outbound message: the ``ol-wa-sent`` KV bucket (this service's own).

One key per outbound message (a digest of its id; ids contain ``:``, which KV
keys do not allow), written *before* each part is sent (``attempting``) and
after WhatsApp accepted it (``parts``, its wamid), before the JetStream ack. A
redelivered outbound resumes after the last part WhatsApp accepted.

The Cloud API has no idempotency key: a gateway killed after WhatsApp accepted a
part but before recording it cannot know whether the client got it. It sends
the part again (a reply is never lost) and counts the resend in ``uncertain``
and in ``openlines_whatsapp_uncertain_resends_total``, so a double is never silent.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from openlines import bus, subjects
from openlines.lanes import PartsSent, SentLog


class SentRecord(PartsSent, kw_only=True, omit_defaults=True):
    wamids: list[str] = msgspec.field(default_factory=list)  # WhatsApp's message ids of the parts it accepted

    def accepted(self, ident: str, last: bool) -> SentRecord:
        return msgspec.structs.replace(self, parts=self.parts + 1, wamids=[*self.wamids, ident], done=last)


async def open_bucket(js: JetStreamContext, *, ttl: float, replicas: int) -> KeyValue:
    return await bus.own_bucket(js, subjects.KV_WHATSAPP_SENT, ttl=ttl, replicas=replicas)


class Sent(SentLog[SentRecord]):
    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, SentRecord)
