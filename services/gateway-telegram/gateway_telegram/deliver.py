"""One :class:`Outbound` -> Bot API calls, and what a failure means.

An outbound message becomes *parts*: its text cut to Telegram's 4096 limit,
then one part per attachment. Each part is one Bot API call; the sender
records each delivered part so a redelivery resumes after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramAPIError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile, InputFile, Message
from nats.js import JetStreamContext

from openlines import files, subjects
from openlines.envelopes import Attachment, Outbound
from openlines.split import split_text

# sendMessage refuses text over 4096 characters, counted in UTF-16 code units (an emoji outside the BMP counts two).
MAX_TEXT = 4096


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


PHOTO_MAX_BYTES = 10 * 1024 * 1024  # sendPhoto: at most 10 MB, width + height <= 10000, ratio <= 20
# Bot API answers to a photo it will not take as one (the file then goes as a document).
PHOTO_REFUSALS = ("PHOTO_INVALID_DIMENSIONS", "PHOTO_SAVE_FILE_INVALID", "IMAGE_PROCESS_FAILED", "PHOTO_EXT_INVALID")

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
    parts = [Part(text=t) for t in split_text(out.text, MAX_TEXT, units="utf16")]
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
        self.max_bytes = max_bytes
        self.reader = files.Reader(js, timeout=timeout, allowed=frozenset({subjects.OBJ_DESK_FILES}))

    async def fetch(self, att: Attachment) -> BufferedInputFile:
        name = att.name or "file"
        if desk_file_key(att.ref) is None:
            raise Permanent(f"attachment {name!r}: not a file uploaded to the desk")
        try:
            stored = await self.reader.get(att.ref, max_bytes=self.max_bytes)
        except files.FileTooLarge:
            raise Permanent(f"attachment {name!r} is larger than {self.max_bytes} bytes") from None
        except files.FileGone:
            raise Permanent(f"attachment {name!r}: no longer in the desk's file store") from None
        except files.StoreUnavailable as exc:
            raise Transient(f"attachment {name!r}: {exc}") from None
        return BufferedInputFile(stored.data, filename=name)

    async def close(self) -> None:
        return None


def desk_file_key(ref: str) -> str | None:
    """``<session>/<file id>`` of a file in the desk's store, from ``ol-desk-files:<session>/<file id>``; else None."""
    parsed = files.parse_ref(ref)
    if parsed is None or parsed[0] != subjects.OBJ_DESK_FILES:
        return None
    return parsed[1]


async def send_part(bot: Bot, chat_id: str, part: Part, store: Files) -> int:
    """Make one Bot API call; the Telegram message id. Raises Permanent | Transient | RetryAfter."""
    chat = chat_ref(chat_id)
    try:
        msg = await _call(bot, chat, part, store)
    except (Permanent, Transient, RetryAfter):
        raise
    except Exception as exc:
        raise classify(exc) from None
    return msg.message_id


async def _call(bot: Bot, chat: int | str, part: Part, store: Files) -> Message:
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
        media: InputFile | str = await store.fetch(att)
    elif att.ref and files.parse_ref(att.ref) is None:
        media = att.ref  # a Telegram file id: Telegram reuses the stored file
    else:
        name = att.name or att.kind
        raise Permanent(f"attachment {name!r}: not a file uploaded to the desk nor a Telegram file id (links are never fetched)")
    if att.kind == "image":
        if att.size > PHOTO_MAX_BYTES:
            return await bot.send_document(chat_id=chat, document=media)  # Telegram takes photos up to 10 MB
        try:
            return await bot.send_photo(chat_id=chat, photo=media)
        except TelegramBadRequest as exc:
            if not any(code in exc.message for code in PHOTO_REFUSALS):
                raise
        # Too many pixels, too narrow, or not decodable as a photo: the same file as a document.
        return await bot.send_document(chat_id=chat, document=media)
    if att.kind == "voice":
        return await bot.send_voice(chat_id=chat, voice=media)
    if att.kind == "audio":
        return await bot.send_audio(chat_id=chat, audio=media)
    if att.kind == "video":
        return await bot.send_video(chat_id=chat, video=media)
    if att.kind == "sticker":
        return await bot.send_sticker(chat_id=chat, sticker=media)
    return await bot.send_document(chat_id=chat, document=media)
