"""A Telegram webhook body -> an aiogram ``Update`` -> :class:`openlines.envelopes.Inbound`.

Parsing uses aiogram's own types (``Update.model_validate``) so the shapes
follow the Bot API; everything here is pure (the caller passes ``now``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from aiogram.types import CallbackQuery, Message, Update, User
from pydantic import ValidationError

from openlines.envelopes import BAD_JSON, Attachment, ClientProfile, Inbound

CHANNEL = "telegram"
EDITED_PREFIX = "(edited) "
# Update types the gateway asks Telegram for (setWebhook allowed_updates) and handles.
ALLOWED_UPDATES = ("message", "edited_message", "callback_query")


class BadUpdate(ValueError):
    """The body is not a Telegram update we can read; ``detail`` says why (400)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Normalised:
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
    try:
        update = Update.model_validate({"update_id": update_id, **handled}) if handled else None
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise BadUpdate(f"{where}: {first.get('msg', 'invalid')}") from None
    return Parsed(update_id=update_id, update=update, types=(*handled, *other))


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
