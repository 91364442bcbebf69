"""Files on the bus: bytes live in NATS object stores, messages carry a reference.

Whoever receives a file stores it once, in the object store that service
owns, and every message names it by reference (``Attachment.ref`` =
``<store>:<key>``). Nobody downloads a link a message names (a link can be
forged to point anywhere); a service that needs the bytes reads them from the
store by reference.

| store | written by | key |
|---|---|---|
| ``ol-desk-files`` | desk (operators' files) | ``<session>/<file id>`` |
| ``ol-email-files`` | gateway-email (MIME parts) | ``<account>/<sha256>`` |
| ``ol-tg-files`` | gateway-telegram (``getFile``) | ``<account>/<sha256>`` |
| ``ol-vk-files`` | gateway-vk (photo, doc, audio message) | ``<account>/<sha256>`` |
| ``ol-wa-files`` | gateway-whatsapp (media by id) | ``<account>/<sha256>`` |
| ``ol-webchat-files`` | gateway-webchat (visitor uploads) | ``<account>/<visitor>/<file id>`` |

Each store keeps files ``OPENLINES_FILES_MAX_AGE_DAYS`` (90 by default; the
store's stream ``max_age``), so NATS deletes them when they are that old.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ObjectDeletedError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from openlines import subjects
from openlines.envelopes import Attachment, Inbound

log = logging.getLogger("openlines.files")

# Every store a reference may name (the desk serves them to operators who may read the session).
STORES: frozenset[str] = frozenset(
    {
        subjects.OBJ_DESK_FILES,
        subjects.OBJ_EMAIL_FILES,
        subjects.OBJ_TELEGRAM_FILES,
        subjects.OBJ_VK_FILES,
        subjects.OBJ_WHATSAPP_FILES,
        subjects.OBJ_WEBCHAT_FILES,
    }
)

Kind = Literal["image", "file", "audio", "voice", "video"]

# What people may send through our own edges (the desk's uploads, the widget's), and what each becomes.
SENDABLE: dict[str, Kind] = {
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
    "audio/ogg": "voice",  # Ogg/Opus is what messengers record voice messages in: sent as one
    "video/mp4": "video",
}

# Images are shown inline by browsers, so their bytes must be what the type says.
_IMAGE_MAGIC: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "image/webp": (b"RIFF",),
}
# Played by the browser's own <audio>/<video> elements (which never run scripts).
PLAYABLE_AUDIO = frozenset({"audio/ogg", "audio/mpeg", "audio/mp4", "audio/aac", "audio/x-m4a", "audio/wav", "audio/webm"})
PLAYABLE_VIDEO = frozenset({"video/mp4", "video/webm"})

MAX_NAME = 120
_UNSAFE = re.compile(r"[^\w.\- ()+,]", re.UNICODE)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


class FileGone(Exception):
    """No such file (never stored, deleted, or past its age)."""


class FileTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, more than {limit}")
        self.size = size
        self.limit = limit


class StoreUnavailable(Exception):
    """NATS did not answer in time: try again later."""


def ref(store: str, key: str) -> str:
    """The reference of ``key`` in ``store``: ``<store>:<key>``."""
    if store not in STORES or not valid_key(key):
        raise ValueError(f"not a file reference: {store!r}:{key!r}")
    return f"{store}:{key}"


def valid_key(key: str) -> bool:
    parts = key.split("/")
    return 2 <= len(parts) <= 4 and bool(_TOKEN.match(parts[0])) and all(_PART.match(p) for p in parts[1:])


def parse_ref(value: str) -> tuple[str, str] | None:
    """``(store, key)`` of a reference to a file in one of our stores; None for anything else (a channel's file id)."""
    store, sep, key = value.partition(":")
    if not sep or store not in STORES or not valid_key(key):
        return None
    return store, key


def content_key(account: str, data: bytes) -> str:
    """``<account>/<sha256>``: the same bytes are stored once per account."""
    return f"{account}/{hashlib.sha256(data).hexdigest()}"


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


def sniff_image(head: bytes) -> str | None:
    """The image type these first bytes are (png, jpeg, gif, webp), or None."""
    for mime, magics in _IMAGE_MAGIC.items():
        if head.startswith(magics) and (mime != "image/webp" or head[8:12] == b"WEBP"):
            return mime
    return None


def image_matches(mime: str, head: bytes) -> bool:
    """Whether bytes that claim to be image ``mime`` are that image."""
    return mime in _IMAGE_MAGIC and sniff_image(head) == mime


def shown_as(mime: str, head: bytes) -> Literal["image", "audio", "video"] | None:
    """How a browser may show a file inline (a preview, a player); None: only as a download.

    An image is shown when its bytes are a PNG, JPEG, GIF or WebP, whatever image type it was
    said to be (a channel's "image/jpeg" may be a PNG); it is then served as what its bytes are.
    """
    mime = mime.lower()
    if mime.startswith("image/") and sniff_image(head) is not None:
        return "image"
    if mime in PLAYABLE_AUDIO:
        return "audio"
    if mime in PLAYABLE_VIDEO:
        return "video"
    return None


def kind_of(mime: str) -> Kind:
    mime = mime.lower()
    if mime in SENDABLE:
        return SENDABLE[mime]
    top = mime.split("/", 1)[0]
    return {"image": "image", "audio": "audio", "video": "video"}.get(top, "file")  # type: ignore[return-value]


class Meta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a store keeps about a file besides its bytes (in the object's description)."""

    name: str = ""
    mime: str = ""
    session: str = ""  # desk files: the chat it was uploaded for
    uploaded_at: float | None = None  # epoch seconds


def meta_of(info: js_api.ObjectInfo) -> Meta:
    try:
        return msgspec.json.decode(info.description or "", type=Meta)
    except msgspec.DecodeError:
        return Meta()


async def open_store(
    js: JetStreamContext, name: str, *, description: str, max_age: float = 0.0, replicas: int = 1
) -> ObjectStore:
    """The object store ``name`` of this service, created with ``max_age`` (seconds, 0 = forever) if missing,
    or brought to that age if it has another one (a shorter age deletes the older files at once)."""
    try:
        store = await js.object_store(name)
    except (BucketNotFoundError, NotFoundError, BadRequestError):
        return await js.create_object_store(
            name,
            config=js_api.ObjectStoreConfig(
                storage=js_api.StorageType.FILE, description=description, ttl=max_age or None, replicas=replicas
            ),
        )
    await keep_for(js, name, max_age)
    return store


class OwnStore:
    """A service's own object store, opened (or created, see :func:`open_store`) on first use, once however many
    ask at the same time; call it for the store."""

    def __init__(self, js: JetStreamContext, name: str, *, description: str, max_age: float = 0.0, replicas: int = 1) -> None:
        self.js = js
        self.name = name
        self.description = description
        self.max_age = max_age
        self.replicas = replicas
        self._store: ObjectStore | None = None
        self._opening = asyncio.Lock()

    async def __call__(self) -> ObjectStore:
        if self._store is None:
            async with self._opening:
                if self._store is None:
                    self._store = await open_store(
                        self.js, self.name, description=self.description, max_age=self.max_age, replicas=self.replicas
                    )
        return self._store


async def keep_for(js: JetStreamContext, name: str, max_age: float) -> None:
    """Sets the store's stream ``max_age`` to ``max_age`` when it differs."""
    config = (await js.stream_info(f"OBJ_{name}")).config
    if abs((config.max_age or 0.0) - max_age) < 1e-3:
        return
    config.max_age = max_age
    if max_age and config.duplicate_window and config.duplicate_window > max_age:
        config.duplicate_window = max_age  # NATS refuses a duplicate window longer than the age
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        log.warning("could not change how long files are kept", extra={"store": name, "max_age": max_age, "error": str(exc)})
    else:
        log.info("files are now kept for a new age", extra={"store": name, "max_age": max_age})


class NotKept(Exception):
    """Why a client's file is not kept (shown to the operator under the message)."""


def omitted(att: Attachment, why: str) -> Attachment:
    """``att`` as it came, saying in ``extra.omitted`` why its file was not kept."""
    log.info("client file not kept", extra={"kind": att.kind, "reason": why})
    return msgspec.structs.replace(att, extra={**att.extra, "omitted": why[:300]})


async def keep_each(
    inbound: Inbound, wanted: Callable[[Attachment], bool], keep: Callable[[Attachment], Awaitable[Attachment]]
) -> Inbound:
    """``inbound`` with every attachment ``wanted`` picks replaced by what ``keep`` made of it (all at once)."""
    todo = [i for i, a in enumerate(inbound.attachments) if wanted(a)]
    if not todo:
        return inbound
    atts = list(inbound.attachments)
    kept = await asyncio.gather(*(keep(atts[i]) for i in todo))
    for i, att in zip(todo, kept, strict=True):
        atts[i] = att
    return msgspec.structs.replace(inbound, attachments=atts)


async def fetch_and_keep(
    store: OwnStore,
    account: str,
    att: Attachment,
    *,
    timeout: float,
    fetch: Callable[[], Awaitable[tuple[bytes, str, str]]],
    made: Callable[[str, bytes, str, str], Attachment],
) -> Attachment:
    """A client's file fetched (``fetch`` -> data, mime, name; within ``timeout``) and kept under its content key;
    ``made(key, data, mime, name)`` is the attachment naming it. A file that cannot be had (:class:`NotKept`,
    too slow, the store failing) never costs the message: ``att`` comes back saying why (:func:`omitted`)."""
    try:
        async with asyncio.timeout(timeout):
            data, mime, name = await fetch()
        key = content_key(account, data)
        await put_once(await store(), key, data, Meta(name=name, mime=mime))
    except NotKept as exc:
        return omitted(att, str(exc))
    except TimeoutError:
        return omitted(att, f"not downloaded within {timeout:g} s")
    except (nats.errors.Error, OSError) as exc:
        log.warning("client file not stored", extra={"account": account, "error": repr(exc)})
        return omitted(att, "could not be stored")
    return made(key, data, mime, name)


async def put_once(store: ObjectStore, key: str, data: bytes, meta: Meta) -> None:
    """Store ``data`` under ``key`` unless it is there already (content-addressed keys: the same bytes)."""
    try:
        info = await store.get_info(key)
    except (ObjectNotFoundError, ObjectDeletedError, NotFoundError):
        info = None
    if info is not None and not info.deleted:
        return
    obj = js_api.ObjectMeta(name=key, description=msgspec.json.encode(meta).decode())
    await store.put(key, data, meta=obj)


@dataclass(frozen=True, slots=True)
class Stored:
    data: bytes
    meta: Meta
    size: int


class Reader:
    """Reads files by reference from our stores (each opened on first use).

    Never creates a store: a reader only reads what its owner wrote.
    """

    def __init__(self, js: JetStreamContext, *, timeout: float = 30.0, allowed: frozenset[str] = STORES) -> None:
        self.js = js
        self.timeout = timeout
        self.allowed = allowed
        self._stores: dict[str, ObjectStore] = {}

    async def _store(self, name: str) -> ObjectStore:
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = await self.js.object_store(name)
        return store

    def _key(self, value: str) -> tuple[str, str]:
        parsed = parse_ref(value)
        if parsed is None or parsed[0] not in self.allowed:
            raise FileGone(f"not a stored file: {value!r}")
        return parsed

    async def info(self, value: str) -> tuple[Meta, int]:
        """The file's stored metadata and size; :class:`FileGone` / :class:`StoreUnavailable`."""
        name, key = self._key(value)
        try:
            async with asyncio.timeout(self.timeout):
                info = await (await self._store(name)).get_info(key)
        except (ObjectNotFoundError, ObjectDeletedError, BucketNotFoundError, NotFoundError):
            raise FileGone(value) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        if info.deleted:
            raise FileGone(value)
        return meta_of(info), info.size or 0

    async def get(self, value: str, *, max_bytes: int = 0) -> Stored:
        """The file's bytes (at most ``max_bytes`` when > 0: :class:`FileTooLarge`)."""
        name, key = self._key(value)
        try:
            async with asyncio.timeout(self.timeout):
                store = await self._store(name)
                info = await store.get_info(key)
                if info.deleted:
                    raise FileGone(value)
                if max_bytes and (info.size or 0) > max_bytes:
                    raise FileTooLarge(info.size or 0, max_bytes)
                result = await store.get(key)
        except (ObjectNotFoundError, ObjectDeletedError, BucketNotFoundError, NotFoundError):
            raise FileGone(value) from None
        except (TimeoutError, nats.errors.Error) as exc:
            raise StoreUnavailable(type(exc).__name__) from None
        if result.data is None:
            raise FileGone(value)
        return Stored(data=result.data, meta=meta_of(result.info), size=len(result.data))
