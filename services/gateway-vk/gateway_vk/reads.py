"""Read marks from VK: which of our messages a client has read (``message_read``).

VK tells a community when a client read its dialog up to a message id
(``message_read``: ``from_id``, ``peer_id``, ``read_message_id``), never which
operator reply that was. So after ``messages.send`` answers a message id, the
gateway remembers it in its own bucket, ``ol-vk-sent``: one key per dialog
(``<account>.<peer id>``) holding the replies not yet read (VK id, our
outbound id, its session and part), the newest :data:`KEPT` of them. When
``message_read`` comes, every remembered reply up to ``read_message_id`` gets
a *read* mark (``openlines.marks``: stored in ``OL_MARK``, shown in the desk),
and only then is it forgotten; a mark stored twice (a callback VK retried, two
replicas) is one mark, since its id is ``<message>:<part>:read``.

A reply whose id was not remembered (the bucket unreachable right after the
send) is never marked read: the reply itself is delivered, only its mark is
missing. Any replica may receive the callback: the bucket is shared.
"""

from __future__ import annotations

import logging

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from openlines import marks, subjects
from openlines.bus import kv_get, kv_update, own_bucket
from openlines.envelopes import utcnow

log = logging.getLogger("gateway_vk.reads")

CHANNEL = "vk"
KEPT = 200  # unread replies remembered per dialog; older ones are never marked read


class SentReply(msgspec.Struct, array_like=True, frozen=True):
    vk_id: int  # VK's message id, as messages.send answered it
    message_id: str  # our outbound id
    session_id: str
    part: int = 0  # which part of the reply (a long text goes as several messages)


class Unread(msgspec.Struct, omit_defaults=True):
    replies: list[SentReply] = []  # oldest first


def dialog_key(account: str, peer_id: int) -> str:
    return f"{subjects.token(account, 'account')}.{peer_id}"


async def open_bucket(js: JetStreamContext, *, ttl: float, replicas: int) -> KeyValue:
    return await own_bucket(js, subjects.KV_VK_SENT, ttl=ttl, replicas=replicas)


class Reads:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self.js = js
        self.kv = kv

    async def remember(self, account: str, peer_id: int, reply: SentReply) -> None:
        """A reply VK accepted, to be marked read when the client reads it. Never raises: a missing mark loses nothing."""

        def add(cur: Unread | None) -> Unread:
            kept = [r for r in (cur.replies if cur else []) if r.vk_id != reply.vk_id]
            return Unread(replies=[*kept, reply][-KEPT:])

        try:
            await kv_update(self.kv, dialog_key(account, peer_id), Unread, add)
        except Exception as exc:
            log.warning(
                "a sent reply was not remembered: it will not be marked read",
                extra={"channel": CHANNEL, "account": account, "msg_id": reply.message_id, "error": repr(exc)[:200]},
            )

    async def read(self, account: str, peer_id: int, upto: int) -> int:
        """The client read the dialog up to VK message ``upto``: mark our replies up to it read; how many.

        Raises when NATS does not store the marks (the caller answers VK so that it retries).
        """
        key = dialog_key(account, peer_id)
        current, _ = await kv_get(self.kv, key, Unread)
        done = [r for r in (current.replies if current else []) if r.vk_id <= upto]
        if not done:
            return 0
        at = utcnow()
        for r in done:
            await marks.publish_mark(
                self.js,
                channel=CHANNEL,
                session_id=r.session_id,
                message_id=r.message_id,
                part=r.part,
                status="read",
                at=at,
                account=account,
            )
        gone = {r.vk_id for r in done}

        def forget(cur: Unread | None) -> Unread | None:
            if cur is None or not any(r.vk_id in gone for r in cur.replies):
                return None
            return Unread(replies=[r for r in cur.replies if r.vk_id not in gone])

        await kv_update(self.kv, key, Unread, forget)
        return len(done)
