"""A VK Callback API request body -> :class:`openlines.envelopes.Inbound`.

Only the shape is checked here (the sender is verified in ``http.py``). Every
refusal is a :class:`CallbackError` with the HTTP status and a reason.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from openlines.envelopes import BAD_JSON, Attachment, ClientProfile, Inbound

CHANNEL = "vk"
MAX_FORWARDED = 10  # forwarded messages quoted into the text
MAX_QUOTE = 1000  # characters of one quoted forwarded message
INT64 = 2**63
_EVENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces: it goes into Nats-Msg-Id


class CallbackError(Exception):
    """A request we refuse; nothing is published."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _bad(detail: str) -> CallbackError:
    return CallbackError(400, "bad_request", detail)


# Frozen msgspec Structs rather than frozen dataclasses: a frozen dataclass sets each field through
# object.__setattr__, which showed in the webhook's profile (bench/FINDINGS.md, "P1W, third round").
class Callback(msgspec.Struct, frozen=True):
    """The envelope every Callback API request shares."""

    type: str
    group_id: int
    event_id: str  # "" only for type=confirmation
    secret: str | None
    object: dict[str, Any] = msgspec.field(default_factory=dict)


class VkMessage(msgspec.Struct, frozen=True):
    """The parts of ``message_new.object.message`` we use."""

    id: int
    conversation_message_id: int
    date: int
    peer_id: int
    from_id: int
    text: str
    attachments: list[Attachment]

    @property
    def channel_msg_id(self) -> str:
        # Community bots in group chats get id 0; the conversation id is what identifies it there.
        return str(self.id) if self.id else f"{self.peer_id}_{self.conversation_message_id}"


def _int(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> int:
    value = obj.get(key)
    if value is None and not required:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not -INT64 <= value < INT64:
        raise _bad(f'"{where}{key}" must be an integer')
    return value


def parse_callback(body: bytes) -> Callback:
    try:
        obj: Any = msgspec.json.decode(body)
    except BAD_JSON:
        raise _bad("body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _bad("body must be a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise _bad('"type" must be a non-empty string')
    group_id = _int(obj, "group_id", "")
    secret = obj.get("secret")
    if secret is not None and not isinstance(secret, str):
        raise _bad('"secret" must be a string')
    # Older API versions send no event_id (group_join, wall_post_new, legacy message_new);
    # those events are told apart by a digest of their body (event_key).
    event_id = obj.get("event_id", "")
    if not (isinstance(event_id, str) and _EVENT_ID.match(event_id)):
        event_id = ""
    payload = obj.get("object", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise _bad('"object" must be a JSON object')
    return Callback(
        type=kind,
        group_id=group_id,
        event_id=event_id if isinstance(event_id, str) else "",
        secret=secret,
        object=payload,
    )


def event_key(event: Callback, body: bytes) -> str:
    """What tells one event from another: VK's event_id, or (older API versions send none) a digest of the body.

    VK resends an undelivered event with the same body, so the digest stays the same across its retries.
    """
    return event.event_id or "sha256-" + hashlib.sha256(body).hexdigest()[:48]


def parse_message_new(payload: dict[str, Any]) -> VkMessage | None:
    """``message_new.object`` -> the message, or None when there is nothing to hand to an operator.

    API 5.103 and later wrap the message (``object.message``, beside ``client_info``); earlier
    versions send the message itself as ``object`` (and before 5.80 ``user_id``/``body`` for
    ``from_id``/``text``). All are read.
    """
    msg = payload.get("message")
    where = "object.message."
    if msg is None and any(k in payload for k in ("peer_id", "from_id", "user_id")):
        msg, where = _legacy(payload), "object."
    if not isinstance(msg, dict):
        raise _bad('"object.message" must be a JSON object')
    text = msg.get("text")
    if not isinstance(text, str):
        raise _bad(f'"{where}text" must be a string')
    if not _encodable(text):
        raise _bad(f'"{where}text" is not valid Unicode')
    raw_attachments = msg.get("attachments", [])
    if raw_attachments is None:
        raw_attachments = []
    if not isinstance(raw_attachments, list):
        raise _bad(f'"{where}attachments" must be a list')
    message = VkMessage(
        id=_int(msg, "id", where),
        conversation_message_id=_int(msg, "conversation_message_id", where, required=False),
        date=_int(msg, "date", where),
        peer_id=_int(msg, "peer_id", where),
        from_id=_int(msg, "from_id", where),
        text=_with_forwarded(text, msg.get("fwd_messages")),
        attachments=[a for raw in raw_attachments if (a := attachment(raw)) is not None] + _geo(msg.get("geo")),
    )
    if message.peer_id == 0 or message.from_id == 0:
        raise _bad(f'"{where}peer_id" and "{where}from_id" must not be 0')
    if "action" in msg or (not message.text.strip() and not message.attachments):
        return None  # service messages (chat invites, pins...) and empty messages
    return message


def _legacy(obj: dict[str, Any]) -> dict[str, Any]:
    """A flat pre-5.103 message, with the names of 5.103 (pre-5.80 ``user_id``/``body`` too)."""
    msg = dict(obj)
    if "from_id" not in msg and "user_id" in msg:
        msg["from_id"] = msg["user_id"]
    if "peer_id" not in msg and "user_id" in msg:
        msg["peer_id"] = msg["user_id"]
    if "text" not in msg and "body" in msg:
        msg["text"] = msg["body"]
    return msg


def inbound_id(account: str, event_id: str) -> str:
    """Deterministic: VK resends an event with the same event_id."""
    return f"{CHANNEL}:{account}:{event_id}"


def to_inbound(account: str, event_id: str, msg: VkMessage, name: str, now: datetime) -> Inbound:
    return Inbound(
        id=inbound_id(account, event_id),
        channel=CHANNEL,
        account=account,
        chat_id=str(msg.peer_id),
        user_id=str(msg.from_id),
        profile=ClientProfile(name=name),
        text=msg.text,
        attachments=msg.attachments,
        channel_msg_id=msg.channel_msg_id,
        received_at=now,
    )


# -- attachments ------------------------------------------------------------


def _s(obj: Any, key: str) -> str:
    if not isinstance(obj, dict):
        return ""
    value = obj.get(key)
    if isinstance(value, bool):
        return ""
    if isinstance(value, str):
        return value if _encodable(value) else ""
    if isinstance(value, int | float):
        return str(value)
    return ""


def _ref(kind: str, item: dict[str, Any]) -> str:
    """VK's own attachment string (``photo-1_2_key``), usable again in messages.send."""
    owner, ident = _s(item, "owner_id"), _s(item, "id")
    if not owner or not ident:
        return ""
    key = _s(item, "access_key")
    return f"{kind}{owner}_{ident}" + (f"_{key}" if key else "")


def _largest_url(images: Any) -> str:
    if not isinstance(images, list):
        return ""
    best, area = "", -1
    for img in images:
        url = _s(img, "url") or _s(img, "src")
        if not url:
            continue
        try:
            size = int(_s(img, "width") or 0) * int(_s(img, "height") or 0)
        except ValueError:
            size = 0
        if size >= area:
            best, area = url, size
    return best


def attachment(raw: Any) -> Attachment | None:
    """One item of ``message.attachments``; unknown or garbled items are kept as a typed file reference or dropped."""
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind or not _encodable(kind):
        return None
    item = raw.get(kind)
    if not isinstance(item, dict):
        item = {}
    extra = {"vk_type": kind}
    if kind == "photo":
        url = _s(item.get("orig_photo"), "url") or _largest_url(item.get("sizes"))
        return Attachment(kind="image", ref=_ref(kind, item), url=url, name=_s(item, "text"), extra=extra)
    if kind == "graffiti":
        return Attachment(kind="image", ref=_ref(kind, item), url=_s(item, "url"), extra=extra)
    if kind == "doc":
        if _s(item, "ext"):
            extra["ext"] = _s(item, "ext")
        size = item.get("size")
        return Attachment(
            kind="file",
            name=_s(item, "title"),
            size=size if isinstance(size, int) and not isinstance(size, bool) and 0 <= size < INT64 else 0,
            ref=_ref(kind, item),
            url=_s(item, "url"),
            extra=extra,
        )
    if kind == "audio_message":
        if _s(item, "duration"):
            extra["duration"] = _s(item, "duration")
        return Attachment(
            kind="voice",
            mime="audio/ogg" if _s(item, "link_ogg") else "audio/mpeg",
            ref=_ref(kind, item),
            url=_s(item, "link_ogg") or _s(item, "link_mp3"),
            extra=extra,
        )
    if kind == "audio":
        name = " - ".join(p for p in (_s(item, "artist"), _s(item, "title")) if p)
        return Attachment(kind="audio", name=name, ref=_ref(kind, item), url=_s(item, "url"), extra=extra)
    if kind == "video":
        return Attachment(kind="video", name=_s(item, "title"), ref=_ref(kind, item), extra=extra)
    if kind == "sticker":
        return Attachment(
            kind="sticker",
            ref=_s(item, "sticker_id"),
            url=_largest_url(item.get("images")),
            extra={**extra, "product_id": _s(item, "product_id")} if _s(item, "product_id") else extra,
        )
    if kind == "link":
        return Attachment(kind="file", name=_s(item, "title"), url=_s(item, "url"), extra=extra)
    # wall, market, poll, gift, story, call, article...: a reference the operator can look up
    return Attachment(kind="file", ref=_ref(kind, item), url=_s(item, "url"), extra=extra)


def _geo(raw: Any) -> list[Attachment]:
    if not isinstance(raw, dict):
        return []
    coords = raw.get("coordinates")
    lat, lon = _s(coords, "latitude"), _s(coords, "longitude")
    if not lat or not lon:
        return []
    return [Attachment(kind="location", name=_s(raw.get("place"), "title"), extra={"latitude": lat, "longitude": lon})]


def _with_forwarded(text: str, raw: Any) -> str:
    """Forwarded messages become quoted lines, so the operator sees what the client forwarded."""
    if not isinstance(raw, list):
        return text
    lines = []
    for item in raw[:MAX_FORWARDED]:
        quote = _s(item, "text")
        if quote.strip():
            quoted = quote[:MAX_QUOTE].replace("\n", "\n» ")
            lines.append(f"» {quoted}")
    if not lines:
        return text
    return "\n".join([text, *lines]) if text else "\n".join(lines)


def _encodable(value: str) -> bool:
    # JSON escapes can smuggle lone surrogates in, which no UTF-8 consumer accepts.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- the common shape, read in one typed decode -----------------------------------------------
# Most events are a client's plain text (API 5.103+: object.message beside client_info). Reading them
# with the generic decode and the checks above is about ten times the cost of one typed msgspec decode
# (bench/FINDINGS.md, "P1W at speed"), so exactly that shape - every field the full path reads typed as
# the full path takes it, no attachments, no forwarded messages, no place, no service action - is read
# with msgspec and gives the same Callback and VkMessage the full path gives (a test holds the two equal
# over generated events and the corpus). Anything else, or anything odd, takes the full path.

_Int64 = Annotated[int, msgspec.Meta(ge=-INT64, le=INT64 - 1)]  # what _int takes


class _PlainMessage(msgspec.Struct):
    id: _Int64
    date: _Int64
    peer_id: _Int64
    from_id: _Int64
    text: str
    conversation_message_id: _Int64 | None = None
    attachments: list[Any] | None = None
    fwd_messages: Any = None
    geo: Any = None
    action: Any = msgspec.UNSET


class _PlainObject(msgspec.Struct):
    message: _PlainMessage


class _PlainEvent(msgspec.Struct):
    type: Literal["message_new"]
    group_id: _Int64
    object: _PlainObject
    event_id: Any = ""
    secret: str | None = None


_plain = msgspec.json.Decoder(_PlainEvent)


def plain_message(body: bytes) -> tuple[Callback, VkMessage] | None:
    """The event and its message when the body is a client's plain text; None for any other body."""
    try:
        event = _plain.decode(body)
    except (msgspec.ValidationError, *BAD_JSON):  # BAD_JSON: invalid UTF-8 inside a string too
        return None
    msg = event.object.message
    if (
        msg.attachments
        or (isinstance(msg.fwd_messages, list) and msg.fwd_messages)
        or msg.geo is not None
        or msg.action is not msgspec.UNSET
        or msg.peer_id == 0
        or msg.from_id == 0
        or not msg.text.strip()
        or not _encodable(msg.text)
    ):
        return None
    event_id = event.event_id if isinstance(event.event_id, str) and _EVENT_ID.match(event.event_id) else ""
    callback = Callback(type=event.type, group_id=event.group_id, event_id=event_id, secret=event.secret)
    message = VkMessage(
        id=msg.id,
        conversation_message_id=msg.conversation_message_id or 0,
        date=msg.date,
        peer_id=msg.peer_id,
        from_id=msg.from_id,
        text=msg.text,
        attachments=[],
    )
    return callback, message
