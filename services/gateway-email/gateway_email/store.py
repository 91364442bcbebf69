"""The gateway's own JetStream state: KV buckets, the attachment object store, leases.

| name | kind | keys |
|---|---|---|
| ``ol-email`` | KV | ``cursor.<account>`` -> (UIDVALIDITY, last UID); ``chat.<account>.<chat_key>`` -> the
  client's thread and loop-guard flag; ``sent.<digest>`` -> an outbound mail sent, refused or suppressed |
| ``ol-email-messages`` | KV | ``m.<digest(account, Message-ID)>`` -> which chat/session a Message-ID belongs to |
| ``ol-email-leases`` | KV, TTL = lease ttl | ``<account>`` -> the replica that owns the mailbox |
| ``ol-email-files`` | object store | ``<account>/<sha256>`` -> attachment bytes (``Attachment.ref`` = ``ol-email-files:<key>``) |
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from gateway_email.core.replies import digest
from openlines import files, subjects
from openlines.bus import kv_get, kv_update, own_bucket

log = logging.getLogger("gateway_email.store")

KV_STATE = subjects.KV_EMAIL_STATE
KV_MESSAGES = subjects.KV_EMAIL_MESSAGES
KV_LEASES = subjects.KV_EMAIL_LEASES
OBJ_FILES = subjects.OBJ_EMAIL_FILES


class Cursor(msgspec.Struct, kw_only=True):
    uidvalidity: int
    last_uid: int = 0


class ChatState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One client address of one mailbox: what our next reply threads onto, and the loop guard."""

    address: str
    name: str = ""
    subject: str = ""  # the client's last subject (our reply says "Re: <it>")
    last_message_id: str = ""  # the client's last Message-ID (our reply's In-Reply-To)
    references: list[str] = []  # that mail's References (ours continue them)
    cc: list[str] = []  # others who wrote in this conversation (a colleague in copy, an alias): copied on our replies
    no_auto_reply: bool = False  # the last mail must get no automatic answer (RFC 3834)
    no_auto_reply_reason: str = ""
    updated_at: datetime | None = None


class MessageRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    message_id: str
    account: str
    chat_id: str
    direction: Literal["in", "out"]
    session_id: str = ""  # known for our outbound mails
    out_id: str = ""


class SentRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    out_id: str
    message_id: str
    status: Literal["sent", "failed", "suppressed"]
    detail: str = ""
    at: datetime


def chat_state_key(account: str, chat_key: str) -> str:
    return f"chat.{account}.{chat_key}"


def message_key(account: str, message_id: str) -> str:
    return f"m.{digest(account, message_id)}"


def sent_key(out_id: str) -> str:
    return f"sent.{digest(out_id)}"


def cursor_key(account: str) -> str:
    return f"cursor.{account}"


class Store:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.state: KeyValue
        self.messages: KeyValue
        self.leases: KeyValue
        self.files: ObjectStore

    async def open(self, *, lease_ttl: float, replicas: int = 1, files_max_age: float = 0.0) -> Store:
        self.state = await own_bucket(self.js, KV_STATE, replicas=replicas)
        self.messages = await own_bucket(self.js, KV_MESSAGES, replicas=replicas, ttl=400 * 86400.0)
        self.leases = await own_bucket(self.js, KV_LEASES, replicas=replicas, ttl=lease_ttl)
        self.files = await files.open_store(
            self.js, OBJ_FILES, description="attachments of clients' mails", max_age=files_max_age, replicas=replicas
        )
        return self

    # -- cursor ------------------------------------------------------------

    async def cursor(self, account: str) -> Cursor | None:
        value, _ = await kv_get(self.state, cursor_key(account), Cursor)
        return value

    async def set_cursor(self, account: str, cursor: Cursor) -> None:
        await self.state.put(cursor_key(account), msgspec.json.encode(cursor))

    # -- chats and message ids ----------------------------------------------

    async def chat(self, account: str, chat_id: str) -> ChatState | None:
        value, _ = await kv_get(self.state, chat_state_key(account, subjects.chat_key("email", account, chat_id)), ChatState)
        return value

    async def put_chat(self, account: str, state: ChatState) -> None:
        key = chat_state_key(account, subjects.chat_key("email", account, state.address))
        await kv_update(self.state, key, ChatState, lambda _cur: state)

    async def message(self, account: str, message_id: str) -> MessageRef | None:
        value, _ = await kv_get(self.messages, message_key(account, message_id), MessageRef)
        return value

    async def remember_message(self, ref: MessageRef) -> None:
        await self.messages.put(message_key(ref.account, ref.message_id), msgspec.json.encode(ref))

    async def sent(self, out_id: str) -> SentRecord | None:
        value, _ = await kv_get(self.state, sent_key(out_id), SentRecord)
        return value

    async def record_sent(self, rec: SentRecord) -> None:
        await self.state.put(sent_key(rec.out_id), msgspec.json.encode(rec))


class Lease:
    """Ownership of one mailbox by one replica: a KV key in a bucket whose
    entries expire after ``ttl`` (server clock), refreshed by compare-and-set.

    Taken with ``create`` (fails while someone holds it); renewed with
    ``update(last=revision)`` (fails if it expired and someone else took it);
    released with a delete on stop so a successor need not wait for the TTL.
    """

    def __init__(self, kv: KeyValue, account: str, owner: str) -> None:
        self.kv = kv
        self.account = account
        self.owner = owner
        self.revision: int | None = None

    async def acquire(self) -> bool:
        try:
            self.revision = await self.kv.create(self.account, self.owner.encode())
            return True
        except (KeyWrongLastSequenceError, BadRequestError):
            return False

    async def renew(self) -> bool:
        if self.revision is None:
            return False
        try:
            self.revision = await self.kv.update(self.account, self.owner.encode(), last=self.revision)
            return True
        except (KeyWrongLastSequenceError, BadRequestError):
            self.revision = None
            return False

    async def release(self) -> None:
        if self.revision is None:
            return
        try:
            await asyncio.wait_for(self.kv.delete(self.account, last=self.revision), timeout=2.0)
        except Exception as exc:  # gone already, or NATS away: the TTL frees it
            log.debug("lease release failed", extra={"account": self.account, "error": repr(exc)})
        self.revision = None
