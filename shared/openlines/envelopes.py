"""The messages that travel over the bus: inbound, outbound, transcript, events.

All are msgspec Structs encoded as JSON (readable with the ``nats`` CLI, fast
enough: msgspec decodes ~1 µs per envelope).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, TypeVar

import msgspec

Channel = Literal["webchat", "telegram", "vk", "email", "whatsapp"]
CHANNELS: tuple[str, ...] = ("webchat", "telegram", "vk", "email", "whatsapp")

# Nats-Msg-Id: JetStream's dedup key, and ours after the window.
MSG_ID_HEADER = "Nats-Msg-Id"

T = TypeVar("T")


# What decoding JSON from outside can raise: msgspec reports bytes that are not UTF-8
# inside a string as UnicodeDecodeError, not as a DecodeError.
BAD_JSON = (msgspec.DecodeError, UnicodeDecodeError)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Attachment(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Metadata of a file or rich item; the bytes stay at the channel or in a store."""

    kind: Literal["image", "file", "audio", "voice", "video", "sticker", "location", "contact"]
    name: str = ""
    mime: str = ""
    size: int = 0
    ref: str = ""  # channel file id or object-store key
    url: str = ""
    extra: dict[str, str] = {}


class ClientProfile(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str = ""
    username: str = ""
    language: str = ""
    phone: str = ""
    email: str = ""
    consent: str = ""  # what the client agreed to and when (the widget's pre-chat form), as shown to them
    # a web visitor's visit, as the widget and its browser told: the page they wrote from (no query or
    # fragment), the page that sent them there, their browser in short
    page_url: str = ""
    referrer: str = ""
    browser: str = ""


class Inbound(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One client message as a gateway publishes it to ``ol.in.<channel>.<account>``."""

    id: str  # deterministic, from the channel's own id; also the Nats-Msg-Id
    channel: str
    account: str
    chat_id: str  # where replies go (Telegram chat, VK peer, mailbox thread, visitor)
    user_id: str  # who wrote
    profile: ClientProfile = msgspec.field(default_factory=ClientProfile)
    text: str = ""
    attachments: list[Attachment] = []
    channel_msg_id: str = ""
    received_at: datetime
    # RFC 3834 and the like: never answer this message automatically (mail
    # loops, mailing lists, robots). The router then sends no auto-reply.
    no_auto_reply: bool = False
    no_auto_reply_reason: str = ""
    subject: str = ""  # e-mail subject, for threading and the operator's view
    # When the client sent it by the channel's own clock, where the channel says (WhatsApp's timestamp);
    # the customer-service window counts from it, not from a webhook retried hours later.
    sent_at: datetime | None = None


class TemplateMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message template approved by the channel (WhatsApp), with its variables filled in.

    Outside the customer-service window only such a message reaches the client. The
    outbound ``text`` holds the template's body as the client reads it (for the
    transcript); the gateway sends the template by ``name`` and ``language``.
    """

    name: str
    language: str
    params: list[str] = []  # the body's variables in order ({{1}}, {{2}}, ... or as named)
    param_names: list[str] = []  # named variables ({{order_id}}): their names, in the order of params; empty = numbered


class Outbound(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message for a gateway to deliver, on ``ol.out.<channel>.<account>.<chat>``."""

    id: str  # deterministic; also the Nats-Msg-Id and the channel's idempotency key
    session_id: str
    channel: str
    account: str
    chat_id: str
    text: str = ""
    attachments: list[Attachment] = []
    operator_id: str = ""
    operator_name: str = ""
    auto: bool = False  # an auto-reply, not a person
    created_at: datetime
    template: TemplateMessage | None = None  # send this approved template (text = its body as filled in)


RATING_REQUEST = "rating:"  # the id of the auto-reply asking the client to rate a closed session: rating:<session id>


def rating_request_id(session_id: str) -> str:
    return f"{RATING_REQUEST}{session_id}"


def is_rating_request(out: Outbound) -> bool:
    """The router's request to rate the session (a channel may offer 1-5 as buttons; a typed digit works everywhere)."""
    return out.auto and out.id.startswith(RATING_REQUEST)


class HistoryEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One line of a session's transcript on ``ol.hist.<session>``."""

    id: str
    session_id: str
    direction: Literal["in", "out", "system"]
    text: str = ""
    attachments: list[Attachment] = []
    author_id: str = ""
    author_name: str = ""
    at: datetime
    held: bool = False  # a client message beyond the flood limit: stored, not pushed to the operator
    note: bool = False  # an operator's private note (direction "system"): never sent to the client
    mentions: list[str] = []  # operators a note names with @login: the desk tells them


# The kinds of SessionEvent the router and the gateways publish. Consumers must accept
# kinds they do not know (new ones get added), so the field is a plain str.
EVENT_KINDS: tuple[str, ...] = (
    "session_opened",  # a client's first message opened a session
    "session_waiting",  # no operator could take it: it waits in the line's queue
    "session_held",  # outside business hours, held until the line opens
    "session_flagged",  # marked for a supervisor (reason: e.g. a flood of messages); the operator is not notified per message
    "session_assigned",  # offered to an operator (who must accept or reply)
    "offer_declined",  # the operator let it pass (skipped, or no answer in wait_seconds)
    "session_answered",  # first answered in this offer: the operator accepted or replied, or a supervisor intercepted it
    "session_transferred",  # given to another operator or line, or taken over by a supervisor (intercepted)
    "session_moved",  # an answered chat moved off its absent operator back to the queue (reassign_on_status = "all")
    "session_pinned",  # pinned / unpinned by its operator
    "session_closed",  # by the operator, auto-close, or spam
    "session_tagged",  # tags put on or taken off (reason: "+vip -new"; the transcript line names who)
    "client_edited",  # an operator changed the client's name / phone / e-mail (reason: the fields, "name,phone")
    "client_merged",  # an operator merged another client into this one (reason: the merged client's id)
    "session_rated",  # the client answered the rating request (reason: "1".."5")
    "sla_breached",  # a chat passed its line's first- or next-response target (reason: which, and by how much)
    "operator_status",  # online / away / offline
    "dead_letter",  # an inbound message that could not be handled, with the reason
    "delivery_failed",  # a gateway could not deliver an outbound message
    "crm_linked",  # crm-sync bound the session to CRM records (reason: ids, source)
    # reports about our mails, from the e-mail gateway (on the session of the mail they are about)
    "delivery_delayed",  # a delayed-delivery notice (still trying)
    "delivery_confirmed",  # a delivery confirmation (also a "delivered" mark under the message)
    "message_read",  # a read receipt (also a "read" mark under the message)
    "message_disposition",  # another disposition notification (deleted unread, ...)
    "spam_complaint",  # a feedback report: the client marked our mail as spam
    "auto_reply_received",  # a vacation responder or other robot answered our mail
    "report_received",  # any other multipart/report
)


# What a channel reports about a message it was given, worst last: a later mark never hides "failed".
# "delayed": the client's mail server is still trying (an e-mail delay notice); delivered or read supersede it.
MarkStatus = Literal["sent", "delayed", "delivered", "read", "failed"]
MARK_STATUSES: tuple[str, ...] = ("sent", "delayed", "delivered", "read", "failed")


class DeliveryMark(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the channel said about one outbound message (or one part of it), on ``ol.mark.<session>``.

    Marks can arrive out of order and some may never come (``delivered`` is skipped
    when the client reads at once): whoever shows them keeps the highest status seen
    per message, ``failed`` above all.
    """

    id: str  # <message_id>:<part>:<status>; also the Nats-Msg-Id
    session_id: str
    message_id: str  # the Outbound id (= the transcript entry id)
    status: MarkStatus
    at: datetime  # when the channel says it happened
    part: int = 0  # which part of the message (text chunks, then files, each sent as its own message)
    channel: str = ""
    account: str = ""
    reason: str = ""  # for "failed": the channel's reason, as the operator should read it


class Typing(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Someone is typing, on ``ol.typing.in|out.<channel>.<account>.<chat key>`` (core NATS, not stored)."""

    chat_id: str = ""  # out: where the gateway shows it (the subject carries only the chat's key)
    operator_name: str = ""  # out: who is typing, as the client may see it


class Seen(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The operator has seen the client's messages up to ``upto`` (a transcript entry id), on
    ``ol.seen.<channel>.<account>.<chat key>`` (core NATS, not stored); the client's gateway shows it."""

    chat_id: str
    upto: str


class QueuePlace(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A waiting client's place in the queue, on ``ol.queue.<channel>.<account>.<chat key>`` (core NATS, not stored)."""

    chat_id: str  # whose place (the subject carries only the chat's key)
    place: int = 0  # 1 = next to be answered; 0 = no longer waiting


class SessionEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Session lifecycle and other facts, on ``ol.evt.<kind>``."""

    id: str
    kind: str  # one of EVENT_KINDS
    at: datetime
    session_id: str = ""
    line_id: str = ""
    client_id: str = ""
    operator_id: str = ""
    channel: str = ""
    account: str = ""
    chat_id: str = ""
    reason: str = ""


_json_encoder = msgspec.json.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _json_encoder.encode(obj)


def decoder(typ: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(typ)
