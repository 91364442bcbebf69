"""Clients' files: fetched from Telegram (``getFile``, then the file link) and kept in ``ol-tg-files``.

Done by the webhook before it publishes the update, so the message and its
files reach the operator together and in the client's order. A file that
cannot be fetched (larger than bots may download, refused by Telegram, not
there in time) never costs the message: the attachment stays a Telegram file
id with ``extra.omitted`` saying why, and the operator sees that a file was sent.

The download link is built from our Bot API base, the bot's token and the
``file_path`` Telegram answered, never from anything in the update.
"""

from __future__ import annotations

import logging
import mimetypes
import re

import aiohttp
from aiogram import Bot
from aiogram.exceptions import TelegramAPIError, TelegramNetworkError
from nats.js import JetStreamContext

from gateway_telegram import metrics
from gateway_telegram.api import BotPool
from gateway_telegram.settings import Settings
from openlines import files, subjects
from openlines.edge import TooLarge, read_limited
from openlines.envelopes import Attachment, Inbound
from openlines.files import NotKept

log = logging.getLogger("gateway_telegram.keep")

# Kinds whose ref is a Telegram file id we can download.
FETCHED = frozenset({"image", "file", "voice", "audio", "video", "sticker"})
_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_DEFAULT_MIME = {"image": "image/jpeg", "voice": "audio/ogg", "video": "video/mp4", "sticker": "image/webp"}


class InboundFiles:
    def __init__(self, settings: Settings, js: JetStreamContext, pool: BotPool) -> None:
        self.settings = settings
        self.js = js
        self.pool = pool
        self.store = files.OwnStore(
            js,
            subjects.OBJ_TELEGRAM_FILES,
            description="files clients send to the Telegram bots",
            max_age=settings.files_max_age_days * 86400,
            replicas=settings.replicas,
        )

    async def keep(self, account: str, bot: Bot, inbound: Inbound) -> Inbound:
        """The inbound message with its files stored (refs into ``ol-tg-files``) or marked as not kept."""
        return await files.keep_each(
            inbound,
            lambda a: a.kind in FETCHED and bool(a.ref) and files.parse_ref(a.ref) is None,
            lambda a: self._one(account, bot, a),
        )

    async def _one(self, account: str, bot: Bot, att: Attachment) -> Attachment:
        async def fetch() -> tuple[bytes, str, str]:
            data, path = await self._fetch(bot, att)
            return data, att.mime or _mime_of(path, att.kind), att.name or path.rsplit("/", 1)[-1]

        def made(key: str, data: bytes, mime: str, name: str) -> Attachment:
            metrics.FILES.labels(account, "kept").inc()
            extra = {**att.extra, "file_id": att.ref}
            ref = files.ref(subjects.OBJ_TELEGRAM_FILES, key)
            return Attachment(kind=att.kind, name=name, mime=mime, size=len(data), ref=ref, extra=extra)

        kept = await files.fetch_and_keep(
            self.store, account, att, timeout=self.settings.telegram_file_timeout, fetch=fetch, made=made
        )
        if "omitted" in kept.extra:
            metrics.FILES.labels("-", "not_kept").inc()
        return kept

    async def _fetch(self, bot: Bot, att: Attachment) -> tuple[bytes, str]:
        # The cloud Bot API lets bots download 20 MB (the default); a local Bot API server allows more.
        limit = self.settings.telegram_file_max_bytes
        if att.size > limit:
            raise NotKept(f"{att.size} bytes; bots may download files up to {limit} bytes")
        try:
            tg_file = await bot.get_file(att.ref)
        except TelegramNetworkError:
            raise NotKept("Telegram did not answer getFile") from None
        except TelegramAPIError as exc:  # "Bad Request: file is too big", "invalid file_id", ...
            raise NotKept(f"Telegram refused getFile: {exc.message}") from None
        path = tg_file.file_path or ""
        if not _PATH.match(path) or ".." in path.split("/"):
            raise NotKept("Telegram gave no usable file path")
        if (tg_file.file_size or 0) > limit:
            raise NotKept(f"{tg_file.file_size} bytes; bots may download files up to {limit} bytes")
        url = self.pool.session.api.file_url(bot.token, path)
        http = await self.pool.session.create_session()
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=self.settings.telegram_file_timeout)) as resp:
                if resp.status != 200:
                    # 404 when the link expired (it lives at least an hour) or the file is gone.
                    raise NotKept(f"the file link answered HTTP {resp.status}")
                try:
                    data = await read_limited(resp.content, limit)
                except TooLarge:
                    raise NotKept(f"larger than {limit} bytes") from None
        except aiohttp.ClientError as exc:
            raise NotKept(f"download failed: {type(exc).__name__}") from None
        if not data:
            raise NotKept("the file is empty")
        return data, path


def _mime_of(path: str, kind: str) -> str:
    guessed, _ = mimetypes.guess_type(path)
    if path.endswith(".oga"):
        guessed = "audio/ogg"
    return guessed or _DEFAULT_MIME.get(kind, "application/octet-stream")
