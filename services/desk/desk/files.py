"""Files operators attach to replies: checked and kept in a NATS object store.

A file is stored as ``<session>/<file id>`` in the ``ol-desk-files`` object
store (file storage, so it survives restarts of NATS and the desk). The reply
names it by reference (``Attachment.ref`` = ``ol-desk-files:<session>/<file
id>``): each gateway reads the bytes from the store and sends them as the
channel's own attachment (Telegram and VK uploads, an e-mail MIME part, a link
the widget's gateway signs for that visitor). The desk's own link,
``/files/<session>/<file id>/<name>``, is for operators who may read the chat.

Files are kept for ``files_max_age_days`` (90 by default): the store's stream
has that ``max_age``, so NATS itself deletes a file's chunks and metadata when
it is that old, and the link then answers 404. The desk sets the age when it
creates the store and corrects it on start-up when the setting changed (a
shorter age deletes the older files at once). 0 keeps files forever.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from openlines import files, subjects
from openlines.envelopes import Attachment

log = logging.getLogger("desk.files")

Kind = files.Kind

# What operators may send, and how channels should treat it (shared with the widget's uploads).
ALLOWED_TYPES: dict[str, Kind] = files.SENDABLE

MAX_NAME = files.MAX_NAME
clean_name = files.clean_name


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
            ref=files.ref(subjects.OBJ_DESK_FILES, f"{self.session_id}/{self.file_id}"),
            url=base_url.rstrip("/") + self.path,
        )


class _Meta(msgspec.Struct, kw_only=True):
    name: str
    mime: str
    session: str
    uploaded_at: float | None = None  # epoch seconds; files stored before it was recorded have none


def _url_name(name: str) -> str:
    return quote(name, safe="")


def check(mime: str, head: bytes) -> None:
    if not head:
        raise FileRefused("the file is empty", status=400)
    if mime not in ALLOWED_TYPES:
        allowed = ", ".join(sorted(ALLOWED_TYPES))
        raise FileRefused(f"files of type {mime or 'unknown'!r} cannot be sent; allowed: {allowed}")
    if mime.startswith("image/") and not files.image_matches(mime, head):
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
        store = await files.open_store(
            js, subjects.OBJ_DESK_FILES, description="files operators attach to replies", max_age=max_age, replicas=replicas
        )
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
