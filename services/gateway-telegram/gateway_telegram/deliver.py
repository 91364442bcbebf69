"""One :class:`Outbound` -> Bot API calls, and what a failure means.

An outbound message becomes *parts*: its text cut to Telegram's 4096 limit,
then one part per attachment. Each part is one Bot API call; the sender
records each delivered part so a redelivery resumes after it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import nats.errors
from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile, InputFile, Message
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from gateway_telegram.core.split import split_text
from openlines import subjects
from openlines.envelopes import Attachment, Outbound


class Permanent(Exception):
    """Retrying cannot help (blocked by the user, chat not found, bad file): delivery_failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transient(Exception):
    """May work later (5xx, network, timeouts): retry with backoff."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryAfter(Exception):
    """Telegram's flood control (429): wait ``seconds`` before the next send to this chat."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"retry after {seconds}s")
        self.seconds = seconds


@dataclass(frozen=True, slots=True)
class Part:
    text: str = ""
    attachment: Attachment | None = None

    @property
    def method(self) -> str:
        if self.attachment is None:
            return "sendMessage"
        return _METHODS.get(self.attachment.kind, "sendDocument")


_METHODS = {
    "image": "sendPhoto",
    "voice": "sendVoice",
    "audio": "sendAudio",
    "video": "sendVideo",
    "sticker": "sendSticker",
    "location": "sendLocation",
    "contact": "sendContact",
    "file": "sendDocument",
}


def plan(out: Outbound) -> list[Part]:
    """The Bot API calls for one outbound message, in order: text parts, then attachments."""
    parts = [Part(text=t) for t in split_text(out.text)]
    parts.extend(Part(attachment=a) for a in out.attachments)
    return parts


def chat_ref(chat_id: str) -> int | str:
    """Telegram chat ids are integers; ``@channelname`` stays a string."""
    try:
        return int(chat_id)
    except ValueError:
        return chat_id


def classify(exc: Exception) -> Exception:
    """An aiogram error -> Permanent | Transient | RetryAfter."""
    if isinstance(exc, TelegramRetryAfter):
        return RetryAfter(float(max(1, exc.retry_after)))
    if isinstance(exc, TelegramEntityTooLarge):  # a TelegramNetworkError, but permanent
        return Permanent(f"file too large for Telegram: {exc.message}")
    if isinstance(exc, TelegramServerError | TelegramNetworkError | ClientDecodeError):
        return Transient(f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
    if isinstance(exc, TelegramAPIError):
        # 400 (chat not found, bad request), 401 (token revoked), 403 (blocked
        # by the user, kicked), 404, 409, migrated group: retrying is futile.
        return Permanent(exc.message)
    return exc


class Files:
    """Operator files for upload: read from the desk's object store by the attachment's ``ref``.

    Never fetched by URL: a link is built by the desk for the client, and a
    gateway that downloaded whatever URL an attachment names could be made to
    fetch internal addresses (crm-sync, the NATS monitor) into a client's chat.
    """

    def __init__(self, js: JetStreamContext, max_bytes: int, timeout: float) -> None:
        self.js = js
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._store: ObjectStore | None = None

    async def fetch(self, att: Attachment) -> InputFile:
        key = desk_file_key(att.ref)
        name = att.name or "file"
        if key is None:
            raise Permanent(f"attachment {name!r}: not a file uploaded to the desk")
        try:
            async with asyncio.timeout(self.timeout):
                if self._store is None:
                    self._store = await self.js.object_store(subjects.OBJ_DESK_FILES)
                info = await self._store.get_info(key)
                if (info.size or 0) > self.max_bytes:
                    raise Permanent(f"attachment {name!r} is larger than {self.max_bytes} bytes")
                result = await self._store.get(key)
        except (ObjectNotFoundError, ObjectDeletedError, BucketNotFoundError, NotFoundError):
            raise Permanent(f"attachment {name!r}: no longer in the desk's file store") from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise Transient(f"attachment {name!r}: {type(exc).__name__}") from None
        if result.data is None:
            raise Permanent(f"attachment {name!r}: no longer in the desk's file store")
        return BufferedInputFile(result.data, filename=name)

    async def close(self) -> None:
        self._store = None


def desk_file_key(ref: str) -> str | None:
    """``<session>/<file id>`` of a file in the desk's store, from ``ol-desk-files:<session>/<file id>``; else None."""
    store, sep, key = ref.partition(":")
    if not sep or store != subjects.OBJ_DESK_FILES:
        return None
    session, slash, file_id = key.partition("/")
    if not slash or not session or not file_id or "/" in file_id or ".." in key:
        return None
    return key


async def send_part(bot: Bot, chat_id: str, part: Part, files: Files) -> int:
    """Make one Bot API call; the Telegram message id. Raises Permanent | Transient | RetryAfter."""
    chat = chat_ref(chat_id)
    try:
        msg = await _call(bot, chat, part, files)
    except (Permanent, Transient, RetryAfter):
        raise
    except Exception as exc:
        raise classify(exc) from None
    return msg.message_id


async def _call(bot: Bot, chat: int | str, part: Part, files: Files) -> Message:
    att = part.attachment
    if att is None:
        return await bot.send_message(chat_id=chat, text=part.text)
    extra = att.extra
    if att.kind == "location":
        try:
            lat, lon = float(extra["latitude"]), float(extra["longitude"])
        except (KeyError, ValueError):
            raise Permanent("location attachment without latitude/longitude") from None
        return await bot.send_location(chat_id=chat, latitude=lat, longitude=lon)
    if att.kind == "contact":
        phone, first = extra.get("phone", ""), extra.get("first_name", "") or att.name
        if not phone or not first:
            raise Permanent("contact attachment without phone and first_name")
        return await bot.send_contact(chat_id=chat, phone_number=phone, first_name=first, last_name=extra.get("last_name"))
    if desk_file_key(att.ref) is not None:
        media: InputFile | str = await files.fetch(att)
    elif att.ref:
        media = att.ref  # a Telegram file id: Telegram reuses the stored file
    else:
        name = att.name or att.kind
        raise Permanent(f"attachment {name!r}: not a file uploaded to the desk nor a Telegram file id (links are never fetched)")
    if att.kind == "image":
        return await bot.send_photo(chat_id=chat, photo=media)
    if att.kind == "voice":
        return await bot.send_voice(chat_id=chat, voice=media)
    if att.kind == "audio":
        return await bot.send_audio(chat_id=chat, audio=media)
    if att.kind == "video":
        return await bot.send_video(chat_id=chat, video=media)
    if att.kind == "sticker":
        return await bot.send_sticker(chat_id=chat, sticker=media)
    return await bot.send_document(chat_id=chat, document=media)
