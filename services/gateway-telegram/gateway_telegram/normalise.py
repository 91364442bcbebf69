"""A Telegram webhook body -> an aiogram ``Update`` -> :class:`openlines.envelopes.Inbound`.

Parsing uses aiogram's own types (``Update.model_validate``) so the shapes
follow the Bot API; everything here is pure (the caller passes ``now``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec
from aiogram.types import CallbackQuery, Message, Update, User
from pydantic import ValidationError

from openlines.envelopes import BAD_JSON, Attachment, ClientProfile, Inbound

CHANNEL = "telegram"
EDITED_PREFIX = "(edited) "
FORWARDED_PREFIX = "(forwarded from {}) "
# Update types the gateway asks Telegram for (setWebhook allowed_updates) and handles.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")


class BadUpdate(ValueError):
    """The body is not a Telegram update we can read; ``detail`` says why (400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Normalised(msgspec.Struct, frozen=True):  # a Struct: a frozen dataclass sets each field via object.__setattr__
    kind: str  # message | edited_message | callback_query | ignored:<what>
    inbound: Inbound | None = None  # None: nothing to publish
    callback_query_id: str = ""  # answer it (answerCallbackQuery) once published


def message_id(account: str, bot_id: int, update_id: int) -> str:
    """The envelope id and Nats-Msg-Id of one update of one bot."""
    return f"{CHANNEL}:{account}:{bot_id}:{update_id}"


@dataclass(frozen=True, slots=True)
class Parsed:
    update_id: int
    update: Update | None  # None: no type the gateway handles
    types: tuple[str, ...]  # the type fields the body had (message, poll_answer, ...)


def parse_update(body: bytes) -> Parsed:
    try:
        obj: Any = msgspec.json.decode(body)
    except BAD_JSON as exc:
        raise BadUpdate(f"body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadUpdate("body must be a JSON object (a Telegram Update)")
    update_id = obj.get("update_id")
    if type(update_id) is not int or update_id < 0:
        raise BadUpdate('"update_id" is missing or not a non-negative integer')
    # Validate only what we handle: an update type we drop (or one newer than
    # this aiogram) must not turn into a 400 that Telegram retries for a day.
    handled = {k: obj[k] for k in ALLOWED_UPDATES if obj.get(k) is not None}
    other = sorted(str(k) for k in obj if k != "update_id" and k not in handled)
    update = _validate({"update_id": update_id, **handled}) if handled else None
    return Parsed(update_id=update_id, update=update, types=(*handled, *other))


# What a field that is missing or of the wrong type becomes, by pydantic's error type.
_FILL: dict[str, object] = {
    "bool_type": False,
    "bool_parsing": False,
    "int_type": 0,
    "int_parsing": 0,
    "int_from_float": 0,
    "float_type": 0.0,
    "float_parsing": 0.0,
    "string_type": "",
    "model_type": {},
    "model_attributes_type": {},
    "dict_type": {},
    "list_type": [],
}
_REPAIRS = 64  # fields one update may have filled in before it counts as unreadable


def _validate(body: dict[str, Any]) -> Update:
    """The update as aiogram's types, with what they require but the gateway does not read made up.

    Bot API objects carry required fields the gateway never looks at (``from.is_bot``,
    ``chat_instance``, ``file_unique_id``, ``forward_from.first_name``). A body that lacks one,
    or has one of another type, must not cost the customer the message: such a field gets a
    neutral value of the type the model wants ("" first, then what the next error asks for).
    Only when the fields the gateway does use cannot be read does it count as unreadable.
    """
    for _ in range(_REPAIRS):
        try:
            return Update.model_validate(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
        for err in errors:
            loc = tuple(err.get("loc", ()))
            if not loc or loc[1:] in _ESSENTIAL.get(str(loc[0]), ()) or not _fill(body, loc, err.get("type", "")):
                where = ".".join(str(p) for p in loc) or "body"
                raise BadUpdate(f"{where}: {err.get('msg', 'invalid')}")
    raise BadUpdate("too many fields missing or of the wrong type")


# Fields without which an update cannot be told apart or answered: never made up.
_MESSAGE_ESSENTIAL = frozenset({("message_id",), ("chat",), ("chat", "id")})
_ESSENTIAL: dict[str, frozenset[tuple[Any, ...]]] = {
    "update_id": frozenset({()}),
    "message": _MESSAGE_ESSENTIAL,
    "edited_message": _MESSAGE_ESSENTIAL,
    "callback_query": frozenset({("id",), ("from",), ("from", "id")}),
}


def _fill(body: Any, loc: tuple[Any, ...], kind: str) -> bool:
    """Put a neutral value at ``loc`` (or drop a list item that cannot be read); False when impossible."""
    *parents, last = loc
    node = body
    for step in parents:
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            return False
    if kind == "missing":
        if not isinstance(node, dict):
            return False
        node[last] = ""
        return True
    if kind.startswith(("datetime", "date_")):
        kind = "int_type"  # a date the gateway does not read (it stamps received_at itself): the epoch
    if kind in _FILL and isinstance(node, dict | list):
        value = _FILL[kind]
        if isinstance(node, dict):
            if node.get(last) == value:
                return False  # already tried: the model wants something else
            node[last] = type(value)() if isinstance(value, dict | list) else value
            return True
        if isinstance(last, int) and 0 <= last < len(node):
            node[last] = type(value)() if isinstance(value, dict | list) else value
            return True
    if isinstance(node, list) and isinstance(last, int) and 0 <= last < len(node):
        del node[last]  # one unreadable item of a list (a photo size, an entity): the rest still count
        return True
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    return False


def _s(value: object) -> str:
    return "" if value is None else str(value)


def _extra(**fields: object) -> dict[str, str]:
    return {k: _s(v) for k, v in fields.items() if v not in (None, "")}


def _profile(user: User | None, msg: Message | None) -> ClientProfile:
    if user is None:
        title = msg.chat.title if msg is not None else ""
        return ClientProfile(name=title or "")
    name = " ".join(p for p in (user.first_name, user.last_name) if p).strip()
    phone = ""
    contact = msg.contact if msg is not None else None
    if contact is not None and contact.user_id == user.id:
        # The client shared their own number (a request_contact button): it is the client's phone.
        phone = contact.phone_number
    return ClientProfile(name=name, username=user.username or "", language=user.language_code or "", phone=phone)


def attachments(msg: Message) -> list[Attachment]:
    """Files and rich items of a message, with Telegram file ids as ``ref``."""
    out: list[Attachment] = []
    if msg.photo:
        big = msg.photo[-1]  # Telegram lists the sizes smallest first
        out.append(
            Attachment(
                kind="image",
                mime="image/jpeg",
                size=big.file_size or 0,
                ref=big.file_id,
                extra=_extra(file_unique_id=big.file_unique_id, width=big.width, height=big.height),
            )
        )
    if msg.animation:
        a = msg.animation
        out.append(
            Attachment(
                kind="video",
                name=a.file_name or "",
                mime=a.mime_type or "",
                size=a.file_size or 0,
                ref=a.file_id,
                extra=_extra(file_unique_id=a.file_unique_id, animation="true", duration=a.duration),
            )
        )
    elif msg.document:  # an animation also comes as a document: report it once
        d = msg.document
        out.append(
            Attachment(
                kind="file",
                name=d.file_name or "",
                mime=d.mime_type or "",
                size=d.file_size or 0,
                ref=d.file_id,
                extra=_extra(file_unique_id=d.file_unique_id),
            )
        )
    if msg.voice:
        v = msg.voice
        out.append(
            Attachment(
                kind="voice",
                mime=v.mime_type or "audio/ogg",
                size=v.file_size or 0,
                ref=v.file_id,
                extra=_extra(file_unique_id=v.file_unique_id, duration=v.duration),
            )
        )
    if msg.audio:
        au = msg.audio
        out.append(
            Attachment(
                kind="audio",
                name=au.file_name or au.title or "",
                mime=au.mime_type or "",
                size=au.file_size or 0,
                ref=au.file_id,
                extra=_extra(file_unique_id=au.file_unique_id, duration=au.duration, performer=au.performer, title=au.title),
            )
        )
    if msg.video:
        vi = msg.video
        out.append(
            Attachment(
                kind="video",
                name=vi.file_name or "",
                mime=vi.mime_type or "",
                size=vi.file_size or 0,
                ref=vi.file_id,
                extra=_extra(file_unique_id=vi.file_unique_id, duration=vi.duration, width=vi.width, height=vi.height),
            )
        )
    if msg.video_note:
        vn = msg.video_note
        out.append(
            Attachment(
                kind="video",
                mime="video/mp4",
                size=vn.file_size or 0,
                ref=vn.file_id,
                extra=_extra(file_unique_id=vn.file_unique_id, video_note="true", duration=vn.duration, length=vn.length),
            )
        )
    if msg.sticker:
        st = msg.sticker
        mime = "application/x-tgsticker" if st.is_animated else "video/webm" if st.is_video else "image/webp"
        out.append(
            Attachment(
                kind="sticker",
                mime=mime,
                size=st.file_size or 0,
                ref=st.file_id,
                extra=_extra(file_unique_id=st.file_unique_id, emoji=st.emoji, set_name=st.set_name),
            )
        )
    location = msg.venue.location if msg.venue else msg.location
    if location is not None:
        venue = msg.venue
        out.append(
            Attachment(
                kind="location",
                name=venue.title if venue else "",
                extra=_extra(
                    latitude=location.latitude,
                    longitude=location.longitude,
                    address=venue.address if venue else None,
                    live_period=location.live_period,
                ),
            )
        )
    if msg.contact:
        c = msg.contact
        name = " ".join(p for p in (c.first_name, c.last_name) if p)
        out.append(
            Attachment(
                kind="contact",
                name=name,
                extra=_extra(phone=c.phone_number, first_name=c.first_name, last_name=c.last_name, user_id=c.user_id),
            )
        )
    return out


def _name_of(user: Any) -> str:
    if user is None:
        return ""
    title = getattr(user, "title", None)  # a channel in the legacy forward_from (older clients send it so)
    if isinstance(title, str) and title:
        return title
    name = " ".join(p for p in (getattr(user, "first_name", ""), getattr(user, "last_name", "")) if p).strip()
    username = getattr(user, "username", None)
    return name or (f"@{username}" if username else "")


def forwarded_from(msg: Message) -> str:
    """Who a forwarded message came from, as the client's app shows it; "" when it was not forwarded.

    Bot API 7.0+ sends ``forward_origin`` (a user, a hidden user, a chat or a channel); older
    updates ``forward_from`` / ``forward_sender_name`` / ``forward_from_chat``.
    """
    origin = msg.forward_origin
    if origin is not None:
        for attr in ("sender_user", "sender_chat", "chat"):
            who = _name_of(getattr(origin, attr, None))
            if who:
                signature = getattr(origin, "author_signature", None)
                return f"{who} ({signature})" if signature else who
        hidden = getattr(origin, "sender_user_name", None)
        return hidden if isinstance(hidden, str) and hidden else "someone"
    legacy = getattr(msg, "forward_from", None)
    if legacy is not None:
        return _name_of(legacy) or "someone"
    hidden = getattr(msg, "forward_sender_name", None)
    if isinstance(hidden, str) and hidden:
        return hidden
    chat = getattr(msg, "forward_from_chat", None)
    if chat is not None:
        return _name_of(chat) or "a channel"
    return ""


def _text(msg: Message) -> str:
    if msg.text:
        return msg.text
    if msg.caption:
        return msg.caption
    if msg.dice:
        return f"{msg.dice.emoji} {msg.dice.value}"
    if msg.poll:
        options = " / ".join(o.text for o in msg.poll.options)
        return f"poll: {msg.poll.question} ({options})"
    return ""


def _from_message(account: str, bot_id: int, update: Update, msg: Message, edited: bool, now: datetime) -> Normalised:
    kind = "edited_message" if edited else "message"
    text = _text(msg)
    files = attachments(msg)
    if not text and not files:
        # Service messages (members joined, pinned, chat photo changed ...) are not client words.
        return Normalised(kind="ignored:service_message")
    origin = forwarded_from(msg)
    if origin:
        text = f"{FORWARDED_PREFIX.format(origin)}{text}"
    if edited:
        text = EDITED_PREFIX + text
    user = msg.from_user
    if user is not None:
        user_id = str(user.id)
    elif msg.sender_chat is not None:  # an anonymous group admin or a channel
        user_id = str(msg.sender_chat.id)
    else:
        user_id = str(msg.chat.id)
    return Normalised(
        kind=kind,
        inbound=Inbound(
            id=message_id(account, bot_id, update.update_id),
            channel=CHANNEL,
            account=account,
            chat_id=str(msg.chat.id),
            user_id=user_id,
            profile=_profile(user, msg),
            text=text,
            attachments=files,
            channel_msg_id=str(msg.message_id),
            received_at=now,
        ),
    )


def _from_callback(account: str, bot_id: int, update: Update, cq: CallbackQuery, now: datetime) -> Normalised:
    if not cq.data:
        return Normalised(kind="ignored:callback_without_data", callback_query_id=cq.id)
    # The button's message is in the chat with the client; without it (inline
    # mode) the private chat with the user has the user's id.
    chat_id = str(cq.message.chat.id) if cq.message is not None else str(cq.from_user.id)
    return Normalised(
        kind="callback_query",
        callback_query_id=cq.id,
        inbound=Inbound(
            id=message_id(account, bot_id, update.update_id),
            channel=CHANNEL,
            account=account,
            chat_id=chat_id,
            user_id=str(cq.from_user.id),
            profile=_profile(cq.from_user, None),
            text=cq.data,
            channel_msg_id=cq.id,
            received_at=now,
        ),
    )


# -- the common shape, without aiogram ----------------------------------------------------
# Most updates are a client's plain text in the private chat with the bot. Validating those with
# aiogram's models costs about a quarter of the webhook's time (bench/FINDINGS.md, P1 webhooks), so
# exactly that shape - nothing more, every field of the right type - is read with msgspec and
# turned into the same Inbound as the full path would give (a property test holds the two equal).
# Anything else (entities, a reply, a forward, a group, a file, a field added by a newer Bot API)
# does not fit and takes the full path.


class _PlainUser(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    is_bot: bool
    first_name: str
    last_name: str = ""
    username: str = ""
    language_code: str = ""
    is_premium: bool = False


class _PlainChat(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    type: Literal["private"]
    first_name: str = ""
    last_name: str = ""
    username: str = ""


class _PlainLinkPreview(msgspec.Struct, forbid_unknown_fields=True):
    """Bot API 7.0's ``link_preview_options``: how the client's app shows a link (the operator does not need it).
    Real private texts carry it (the teloxide capture in the corpus does), so the fast path takes it."""

    is_disabled: bool = False
    url: str = ""
    prefer_small_media: bool = False
    prefer_large_media: bool = False
    show_above_text: bool = False


class _PlainMessage(msgspec.Struct, forbid_unknown_fields=True, rename={"sender": "from"}):
    message_id: int
    date: int
    chat: _PlainChat
    sender: _PlainUser
    text: str
    link_preview_options: _PlainLinkPreview | None = None


class _PlainUpdate(msgspec.Struct, forbid_unknown_fields=True):
    update_id: int
    message: _PlainMessage


_plain = msgspec.json.Decoder(_PlainUpdate)


def plain_text(account: str, bot_id: int, body: bytes, now: datetime) -> Normalised | None:
    """The update when it is a client's plain text in the private chat with the bot; None for any other."""
    try:
        update = _plain.decode(body)
    except (msgspec.ValidationError, *BAD_JSON):  # BAD_JSON: invalid UTF-8 inside a string too
        return None
    msg, user = update.message, update.message.sender
    if update.update_id < 0 or not msg.text or msg.chat.id != user.id:
        return None
    name = " ".join(p for p in (user.first_name, user.last_name) if p).strip()
    return Normalised(
        kind="message",
        inbound=Inbound(
            id=message_id(account, bot_id, update.update_id),
            channel=CHANNEL,
            account=account,
            chat_id=str(msg.chat.id),
            user_id=str(user.id),
            profile=ClientProfile(name=name, username=user.username, language=user.language_code),
            text=msg.text,
            channel_msg_id=str(msg.message_id),
            received_at=now,
        ),
    )


def normalise(account: str, bot_id: int, parsed: Parsed, now: datetime) -> Normalised:
    """What to publish for one update (and what to acknowledge)."""
    update = parsed.update
    if update is None:
        return Normalised(kind=f"ignored:{parsed.types[0] if parsed.types else 'empty'}")
    if update.message is not None:
        return _from_message(account, bot_id, update, update.message, False, now)
    if update.edited_message is not None:
        return _from_message(account, bot_id, update, update.edited_message, True, now)
    if update.callback_query is not None:
        return _from_callback(account, bot_id, update, update.callback_query, now)
    return Normalised(kind="ignored:empty")
