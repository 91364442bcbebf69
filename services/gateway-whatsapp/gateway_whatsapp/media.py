"""Files both ways, always by reference, never by a link.

- **Clients' files** (image, video, document, audio, voice, sticker) come as a
  media id in the webhook. The gateway asks the Graph API for the file's
  short-lived URL, downloads it with the number's token (the URL alone does not
  open it), checks size and checksum, and keeps it in the object store
  ``ol-wa-files`` under ``<account>/<sha256>`` *before* the message is
  published; the message's attachment names it as ``ol-wa-files:<key>``.
  WhatsApp keeps a file about 30 days and its URL 5 minutes: fetched later, it
  might be gone.
- **Operators' files** are read from the desk's store ``ol-desk-files`` by the
  attachment's ``ref`` and uploaded to WhatsApp (``/media``), then sent by the
  media id WhatsApp gives back: a link would have to be reachable by Meta and
  could be made to point anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging

import msgspec
import nats.errors
from nats.js import JetStreamContext

from gateway_whatsapp import metrics
from gateway_whatsapp.accounts import Number
from gateway_whatsapp.core.errors import classify
from gateway_whatsapp.graph import Graph, GraphError, GraphUnavailable, MediaRefused
from gateway_whatsapp.normalise import Media
from openlines import files, subjects
from openlines.envelopes import Attachment

log = logging.getLogger("gateway_whatsapp.media")

STORE = subjects.OBJ_WHATSAPP_FILES


class FetchLater(Exception):
    """The file could not be fetched or kept now (WhatsApp or NATS away): answer 503 so the webhook comes again."""


def expected_digest(value: str) -> bytes | None:
    """The SHA-256 a webhook or the API gives (hex, or base64 as in some payloads); None when it is neither."""
    text = value.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


class ClientFiles:
    """Fetches clients' files by media id and keeps them in ``ol-wa-files``."""

    def __init__(
        self, js: JetStreamContext, graph: Graph, *, max_bytes: int, concurrency: int, max_age: float, replicas: int
    ) -> None:
        self.js = js
        self.graph = graph
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.replicas = replicas
        self._sem = asyncio.Semaphore(concurrency)
        self.store = files.OwnStore(
            js, STORE, description="gateway-whatsapp: files clients send", max_age=max_age, replicas=replicas
        )

    async def keep(self, number: Number, media: Media, att: Attachment) -> Attachment:
        """``att`` naming the kept file; or, when WhatsApp will never give it, ``att`` saying why in ``extra.omitted``.

        Raises :class:`FetchLater` when trying again may work.
        """
        try:
            async with self._sem:
                data, mime = await self._fetch(number, media)
        except MediaRefused as exc:
            metrics.MEDIA.labels("refused").inc()
            return self._not_kept(att, str(exc))
        except GraphError as exc:
            verdict = classify(exc.failure)
            if verdict.kind != "permanent":
                metrics.MEDIA.labels("retry").inc()
                raise FetchLater(verdict.reason) from None
            metrics.MEDIA.labels("gone").inc()
            return self._not_kept(att, f"WhatsApp did not give the file: {verdict.reason}")
        except GraphUnavailable as exc:
            metrics.MEDIA.labels("retry").inc()
            raise FetchLater(str(exc)) from None
        key = files.content_key(number.account, data)
        name = files.clean_name(att.name) if att.name else _default_name(att.kind, mime)
        try:
            await files.put_once(await self.store(), key, data, files.Meta(name=name, mime=mime))
        except (TimeoutError, nats.errors.Error) as exc:
            metrics.MEDIA.labels("retry").inc()
            raise FetchLater(f"the file could not be stored: {type(exc).__name__}") from None
        metrics.MEDIA.labels("kept").inc()
        extra = {k: v for k, v in att.extra.items() if k != "sha256"}
        return msgspec.structs.replace(att, ref=files.ref(STORE, key), mime=mime, size=len(data), name=name, extra=extra)

    async def _fetch(self, number: Number, media: Media) -> tuple[bytes, str]:
        info = await self.graph.media_info(number, media.media_id)
        if info.file_size and info.file_size > self.max_bytes:
            raise MediaRefused(f"the file is {info.file_size} bytes; at most {self.max_bytes} are kept")
        if not info.url:
            raise MediaRefused("WhatsApp gave no URL for the file")
        data = await self.graph.download(number, info.url, self.max_bytes)
        expected = expected_digest(media.sha256) or expected_digest(info.sha256)
        if expected is not None and hashlib.sha256(data).digest() != expected:
            raise MediaRefused("the downloaded file does not match WhatsApp's checksum")
        mime = (info.mime_type or media.mime).split(";", 1)[0].strip().lower() or "application/octet-stream"
        return data, mime

    def _not_kept(self, att: Attachment, why: str) -> Attachment:
        log.warning("client file not kept", extra={"channel": "whatsapp", "reason": why})
        return files.omitted(att, why)


_EXT = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "video/3gpp": ".3gp",
    "audio/ogg": ".ogg",
    "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/amr": ".amr",
    "application/pdf": ".pdf",
}


def _default_name(kind: str, mime: str) -> str:
    return f"{kind}{_EXT.get(mime, '')}"


# -- operators' files -------------------------------------------------------


class FileProblem(Exception):
    """An operator's file that cannot be sent; ``permanent`` False: try again later."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class DeskFiles:
    """Reads operators' files from ``ol-desk-files`` by reference (never a link; never creates the store)."""

    def __init__(self, js: JetStreamContext, *, max_bytes: int, timeout: float) -> None:
        self.max_bytes = max_bytes
        self.reader = files.Reader(js, timeout=timeout, allowed=frozenset({subjects.OBJ_DESK_FILES}))

    async def read(self, att: Attachment) -> bytes:
        name = att.name or att.kind
        if files.parse_ref(att.ref) is None or not att.ref.startswith(subjects.OBJ_DESK_FILES + ":"):
            raise FileProblem(f"attachment {name!r}: not a file uploaded to the desk (links are never fetched)", permanent=True)
        try:
            return (await self.reader.get(att.ref, max_bytes=self.max_bytes)).data
        except files.FileGone:
            raise FileProblem(f"attachment {name!r}: no longer in the desk's file store", permanent=True) from None
        except files.FileTooLarge:
            raise FileProblem(f"attachment {name!r} is larger than {self.max_bytes} bytes", permanent=True) from None
        except files.StoreUnavailable as exc:
            raise FileProblem(f"attachment {name!r}: {exc}", permanent=False) from None
