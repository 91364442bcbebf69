"""Files operators attach to replies: checked, kept in a NATS object store, served by link.

A file is stored as ``<session>/<file id>`` in the ``ol-desk-files`` object
store (file storage, so it survives restarts of NATS and the desk). Its link,
``/files/<session>/<file id>/<name>``, is what goes into the Outbound
``attachments``: the webchat widget shows it, Telegram's gateway downloads it
to upload it again, VK and e-mail send it as a link. The random 144-bit file
id makes the link unguessable; it needs no sign-in because the client's
channel must fetch it.

Files are kept for ``files_max_age_days`` (90 by default): the store's stream
has that ``max_age``, so NATS itself deletes a file's chunks and metadata when
it is that old, and the link then answers 404. The desk sets the age when it
creates the store and corrects it on start-up when the setting changed (a
shorter age deletes the older files at once). 0 keeps files forever.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote

import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from openlines import subjects
from openlines.envelopes import Attachment

log = logging.getLogger("desk.files")

Kind = Literal["image", "file", "audio", "video"]

# What operators may send, and how channels should treat it.
ALLOWED_TYPES: dict[str, Kind] = {
    "image/png": "image",
    "image/jpeg": "image",
    "image/gif": "image",
    "image/webp": "image",
    "application/pdf": "file",
    "text/plain": "file",
    "text/csv": "file",
    "application/zip": "file",
    "application/msword": "file",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "file",
    "application/vnd.ms-excel": "file",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "file",
    "application/vnd.oasis.opendocument.text": "file",
    "application/vnd.oasis.opendocument.spreadsheet": "file",
    "audio/mpeg": "audio",
    "audio/ogg": "audio",
    "video/mp4": "video",
}

# Images are shown inline by browsers, so their bytes must be what the type says.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}

MAX_NAME = 120
_UNSAFE = re.compile(r"[^\w.\- ()+,]", re.UNICODE)


class FileRefused(ValueError):
    """The upload is not acceptable; the message says why (shown to the operator)."""

    def __init__(self, detail: str, status: int = 415) -> None:
        super().__init__(detail)
        self.status = status  # 415: a type we do not send; 400: nothing to send


@dataclass(frozen=True, slots=True)
class StoredFile:
    session_id: str
    file_id: str
    name: str
    mime: str
    size: int

    @property
    def path(self) -> str:
        return f"/files/{self.session_id}/{self.file_id}/{_url_name(self.name)}"

    def attachment(self, base_url: str) -> Attachment:
        return Attachment(
            kind=ALLOWED_TYPES.get(self.mime, "file"),
            name=self.name,
            mime=self.mime,
            size=self.size,
            ref=f"{subjects.OBJ_DESK_FILES}:{self.session_id}/{self.file_id}",
            url=base_url.rstrip("/") + self.path,
        )


class _Meta(msgspec.Struct, kw_only=True):
    name: str
    mime: str
    session: str
    uploaded_at: float | None = None  # epoch seconds; files stored before it was recorded have none


def _url_name(name: str) -> str:
    return quote(name, safe="")


def clean_name(raw: str | None) -> str:
    """A file name safe to show and to put in a header: no path, no control characters."""
    # Browsers send the name as is (a quote as %22); some clients percent-encode all of it.
    name = unquote(raw or "")
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    name = _UNSAFE.sub("_", name).strip(". ")
    if len(name) > MAX_NAME:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: MAX_NAME - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else name[:MAX_NAME]
    return name or "file"


def check(mime: str, head: bytes) -> None:
    if not head:
        raise FileRefused("the file is empty", status=400)
    if mime not in ALLOWED_TYPES:
        allowed = ", ".join(sorted(ALLOWED_TYPES))
        raise FileRefused(f"files of type {mime or 'unknown'!r} cannot be sent; allowed: {allowed}")
    magic = _MAGIC.get(mime)
    if (magic and not head.startswith(magic)) or (mime == "image/webp" and head[8:12] != b"WEBP"):
        raise FileRefused(f"the file says it is {mime} but its content is not")


# A file's chunks are read within this time or the file counts as gone (they may have just expired).
READ_TIMEOUT = 30.0


class FileStore:
    def __init__(self, store: ObjectStore, max_age: float = 0.0) -> None:
        self.store = store
        self.max_age = max_age  # seconds; 0 = kept forever

    @classmethod
    async def open(cls, js: JetStreamContext, *, max_age: float = 0.0, replicas: int = 1) -> FileStore:
        """The store, created with ``max_age`` if missing, or brought to it if it has another one."""
        try:
            store = await js.object_store(subjects.OBJ_DESK_FILES)
        except (BucketNotFoundError, NotFoundError, BadRequestError):
            store = await js.create_object_store(
                subjects.OBJ_DESK_FILES,
                config=js_api.ObjectStoreConfig(
                    storage=js_api.StorageType.FILE,
                    description="files operators attach to replies",
                    ttl=max_age or None,
                    replicas=replicas,
                ),
            )
        else:
            await _keep_for(js, max_age)
        return cls(store, max_age)

    async def put(self, session_id: str, name: str, mime: str, data: bytes) -> StoredFile:
        check(mime, data[:16])
        file_id = secrets.token_urlsafe(18)
        meta = js_api.ObjectMeta(
            name=f"{session_id}/{file_id}",
            description=msgspec.json.encode(_Meta(name=name, mime=mime, session=session_id, uploaded_at=time.time())).decode(),
        )
        await self.store.put(meta.name or "", data, meta=meta)
        return StoredFile(session_id=session_id, file_id=file_id, name=name, mime=mime, size=len(data))

    async def info(self, session_id: str, file_id: str) -> StoredFile | None:
        try:
            info = await self.store.get_info(f"{session_id}/{file_id}")
        except (ObjectNotFoundError, ObjectDeletedError, NotFoundError):
            return None
        return _stored(session_id, file_id, info, self._oldest())

    async def get(self, session_id: str, file_id: str) -> tuple[StoredFile, bytes] | None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                result = await self.store.get(f"{session_id}/{file_id}")
        except (ObjectNotFoundError, ObjectDeletedError, NotFoundError, TimeoutError):
            return None
        stored = _stored(session_id, file_id, result.info, self._oldest())
        if stored is None or result.data is None:
            return None
        return stored, result.data

    def _oldest(self) -> float:
        """Files uploaded before this epoch second are past their age (NATS deletes them about now)."""
        return time.time() - self.max_age if self.max_age else 0.0


async def _keep_for(js: JetStreamContext, max_age: float) -> None:
    """Sets the store's stream ``max_age`` to the configured one when it differs."""
    config = (await js.stream_info(f"OBJ_{subjects.OBJ_DESK_FILES}")).config
    if abs((config.max_age or 0.0) - max_age) < 1e-3:
        return
    config.max_age = max_age
    if max_age and config.duplicate_window and config.duplicate_window > max_age:
        config.duplicate_window = max_age  # NATS refuses a duplicate window longer than the age
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        log.warning("could not change how long files are kept", extra={"max_age": max_age, "error": str(exc)})
    else:
        log.info("files are now kept for a new age", extra={"max_age": max_age})


def _stored(session_id: str, file_id: str, info: js_api.ObjectInfo, oldest: float = 0.0) -> StoredFile | None:
    if info.deleted:
        return None
    try:
        meta = msgspec.json.decode(info.description or "", type=_Meta)
    except msgspec.DecodeError:
        return None
    if meta.session != session_id or (meta.uploaded_at is not None and meta.uploaded_at < oldest):
        return None
    return StoredFile(session_id=session_id, file_id=file_id, name=meta.name, mime=meta.mime, size=info.size or 0)
