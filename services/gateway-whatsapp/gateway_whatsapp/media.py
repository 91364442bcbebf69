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
from nats.js import api as js_api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from gateway_whatsapp import metrics
from gateway_whatsapp.accounts import Number
from gateway_whatsapp.core.errors import classify
from gateway_whatsapp.graph import Graph, GraphError, GraphUnavailable, MediaRefused
from gateway_whatsapp.normalise import Media
from openlines import subjects
from openlines.envelopes import Attachment

log = logging.getLogger("gateway_whatsapp.media")

STORE = subjects.OBJ_WHATSAPP_FILES


class FetchLater(Exception):
    """The file could not be fetched or kept now (WhatsApp or NATS away): answer 503 so the webhook comes again."""


class FileMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the store keeps about a file besides its bytes (the object's description)."""

    name: str = ""
    mime: str = ""


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


def content_key(account: str, data: bytes) -> str:
    return f"{account}/{hashlib.sha256(data).hexdigest()}"


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
        self._store: ObjectStore | None = None

    async def store(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self.js.object_store(STORE)
            except (BucketNotFoundError, NotFoundError, BadRequestError):
                self._store = await self.js.create_object_store(
                    STORE,
                    config=js_api.ObjectStoreConfig(
                        storage=js_api.StorageType.FILE,
                        description="gateway-whatsapp: files clients send",
                        ttl=self.max_age or None,
                        replicas=self.replicas,
                    ),
                )
        return self._store

    async def keep(self, number: Number, media: Media, att: Attachment) -> Attachment:
        """``att`` naming the kept file; or, when WhatsApp will never give it, ``att`` saying why in ``extra.not_stored``.

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
        key = content_key(number.account, data)
        name = att.name or _default_name(att.kind, mime)
        try:
            store = await self.store()
            await _put_once(store, key, data, FileMeta(name=name, mime=mime))
        except (TimeoutError, nats.errors.Error) as exc:
            metrics.MEDIA.labels("retry").inc()
            raise FetchLater(f"the file could not be stored: {type(exc).__name__}") from None
        metrics.MEDIA.labels("kept").inc()
        extra = {k: v for k, v in att.extra.items() if k != "sha256"}
        return msgspec.structs.replace(att, ref=f"{STORE}:{key}", mime=mime, size=len(data), name=name, extra=extra)

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
        return msgspec.structs.replace(att, extra={**att.extra, "not_stored": why[:300]})


async def _put_once(store: ObjectStore, key: str, data: bytes, meta: FileMeta) -> None:
    """Store ``data`` under ``key`` unless it is there already (content-addressed keys: the same bytes)."""
    try:
        info = await store.get_info(key)
    except (ObjectNotFoundError, ObjectDeletedError, NotFoundError):
        info = None
    if info is not None and not info.deleted:
        return
    await store.put(key, data, meta=js_api.ObjectMeta(name=key, description=msgspec.json.encode(meta).decode()))


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


def desk_file_key(ref: str) -> str | None:
    """``<session>/<file id>`` of a file in the desk's store, from ``ol-desk-files:<session>/<file id>``; else None."""
    store, sep, key = ref.partition(":")
    if not sep or store != subjects.OBJ_DESK_FILES:
        return None
    session, slash, file_id = key.partition("/")
    if not slash or not session or not file_id or "/" in file_id or ".." in key:
        return None
    return key


class DeskFiles:
    """Reads operators' files from ``ol-desk-files`` (never creates the store: the desk owns it)."""

    def __init__(self, js: JetStreamContext, *, max_bytes: int, timeout: float) -> None:
        self.js = js
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._store: ObjectStore | None = None

    async def read(self, att: Attachment) -> bytes:
        key = desk_file_key(att.ref)
        name = att.name or att.kind
        if key is None:
            raise FileProblem(f"attachment {name!r}: not a file uploaded to the desk (links are never fetched)", permanent=True)
        try:
            async with asyncio.timeout(self.timeout):
                if self._store is None:
                    self._store = await self.js.object_store(subjects.OBJ_DESK_FILES)
                info = await self._store.get_info(key)
                if (info.size or 0) > self.max_bytes:
                    raise FileProblem(f"attachment {name!r} is larger than {self.max_bytes} bytes", permanent=True)
                result = await self._store.get(key)
        except (ObjectNotFoundError, ObjectDeletedError, BucketNotFoundError, NotFoundError):
            raise FileProblem(f"attachment {name!r}: no longer in the desk's file store", permanent=True) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise FileProblem(f"attachment {name!r}: {type(exc).__name__}", permanent=False) from None
        if result.data is None:
            raise FileProblem(f"attachment {name!r}: no longer in the desk's file store", permanent=True)
        return result.data
