"""Files both ways: clients' photos, documents and voice messages into ``ol-vk-files``; operators' files
onto VK's upload servers.

**In.** The callback names each file by a link on VK's servers (``photo.sizes``
/ ``orig_photo``, ``doc.url``, ``audio_message.link_ogg``). The webhook
downloads it before it publishes the message, so message and file reach the
operator together and in order. The link comes from a request body, so it is
fetched only when it is https on a host of ``OPENLINES_VK_FILE_HOSTS`` (VK's
own domains), redirects included, and only up to
``OPENLINES_VK_FILE_MAX_BYTES``. A file not fetched (a foreign host, too big,
too slow) never costs the message: the attachment keeps VK's id and says why
in ``extra.omitted``.

**Out.** An operator's file is read from the desk's store by reference and
uploaded as VK documents it (dev.vk.com, "Uploading files"): an image to
``photos.getMessagesUploadServer`` -> POST ``photo`` -> ``photos.saveMessagesPhoto``;
an Ogg voice message to ``docs.getMessagesUploadServer(type=audio_message)``
and any other file to ``docs.getMessagesUploadServer(type=doc)`` -> POST
``file`` -> ``docs.save``. The attachment strings go with ``messages.send``.
An image VK will not take as a photo (size, dimensions, type) goes as a
document; a file VK takes in no form (MP3 and executables are not documents)
is reported, the rest of the message is sent.
"""

from __future__ import annotations

import logging
import mimetypes
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from nats.js import JetStreamContext

from gateway_vk.settings import Settings
from gateway_vk.vkapi import CommunityApi, VkError, VkUnreachable
from openlines import files, subjects
from openlines.edge import TooLarge, read_limited
from openlines.envelopes import Attachment, Inbound
from openlines.files import NotKept

log = logging.getLogger("gateway_vk.media")

FETCHED = frozenset({"photo", "doc", "audio_message", "graffiti"})
MAX_REDIRECTS = 3
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/gif"})  # what VK takes as a photo
INVALID_HASH = 121  # photos.saveMessagesPhoto: the upload URL was stale or used
SAVE_FAILED = 105  # docs.save: "Couldn't save file"
PARAM_INVALID = 100  # photos.saveMessagesPhoto with an empty photo list: VK did not take the image


class Refused(Exception):
    """VK will not take this file in this form."""


class Unavailable(Exception):
    """VK (or NATS) did not answer: the delivery may work later."""


def allowed(url: str, hosts: tuple[str, ...]) -> bool:
    """Whether ``url`` may be fetched: https on one of ``hosts`` (a domain and its subdomains),
    or exactly an origin listed with its scheme (``http://127.0.0.1:8080``, for a local peer)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port
    except ValueError:
        return False
    if parts.username or parts.password or not host:
        return False
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port else "")
    for entry in hosts:
        if "://" in entry:
            if origin == entry:
                return True
        elif parts.scheme == "https" and port in (None, 443) and (host == entry or host.endswith("." + entry)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Upload:
    """One file for VK: its bytes and how it should go."""

    name: str
    mime: str
    data: bytes
    kind: str


class Media:
    def __init__(self, settings: Settings, js: JetStreamContext) -> None:
        self.settings = settings
        self.js = js
        self.hosts = settings.file_hosts()
        self.desk_files = files.Reader(js, timeout=settings.vk_timeout, allowed=frozenset({subjects.OBJ_DESK_FILES}))
        self.store = files.OwnStore(
            js,
            subjects.OBJ_VK_FILES,
            description="photos, documents and voice messages clients send to the VK communities",
            max_age=settings.files_max_age_days * 86400,
            replicas=settings.replicas,
        )
        self._http: aiohttp.ClientSession | None = None

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.vk_file_timeout))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # -- in -------------------------------------------------------------------

    async def keep(self, account: str, inbound: Inbound) -> Inbound:
        """The message with its files stored in ``ol-vk-files`` (or marked as not kept, with the reason)."""
        return await files.keep_each(
            inbound, lambda a: a.extra.get("vk_type") in FETCHED and bool(a.url), lambda a: self._keep_one(account, a)
        )

    async def _keep_one(self, account: str, att: Attachment) -> Attachment:
        limit = self.settings.vk_file_max_bytes

        async def fetch() -> tuple[bytes, str, str]:
            if att.size > limit:
                raise NotKept(f"{att.size} bytes; files are kept up to {limit} bytes")
            data = await self._download(att.url, limit)
            return data, *_type_and_name(att, data)

        def made(key: str, data: bytes, mime: str, name: str) -> Attachment:
            extra = {**att.extra, "vk_ref": att.ref} if att.ref else dict(att.extra)
            ref = files.ref(subjects.OBJ_VK_FILES, key)
            return Attachment(kind=att.kind, name=name, mime=mime, size=len(data), ref=ref, extra=extra)

        return await files.fetch_and_keep(self.store, account, att, timeout=self.settings.vk_file_timeout, fetch=fetch, made=made)

    async def _download(self, url: str, limit: int) -> bytes:
        http = await self.http()
        for _ in range(MAX_REDIRECTS + 1):
            if not allowed(url, self.hosts):
                raise NotKept(f"the link is not on a VK host ({urlsplit(url).hostname or '?'})")
            try:
                async with http.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise NotKept(f"the link answered HTTP {resp.status}")
                    try:
                        data = await read_limited(resp.content, limit)
                    except TooLarge:
                        raise NotKept(f"larger than {limit} bytes") from None
                    if not data:
                        raise NotKept("the file is empty")
                    return bytes(data)
            except aiohttp.ClientError as exc:
                raise NotKept(f"download failed: {type(exc).__name__}") from None
        raise NotKept("too many redirects")

    # -- out ------------------------------------------------------------------

    async def read(self, att: Attachment) -> Upload:
        """The operator's file from the desk's store; :class:`Refused` when it is not one."""
        name = att.name or "file"
        if (parsed := files.parse_ref(att.ref)) is None or parsed[0] != subjects.OBJ_DESK_FILES:
            raise Refused(f"{name!r} is not a file uploaded to the desk (links are never fetched)")
        try:
            stored = await self.desk_files.get(att.ref, max_bytes=self.settings.vk_upload_max_bytes)
        except files.FileTooLarge:
            raise Refused(f"{name!r} is larger than {self.settings.vk_upload_max_bytes} bytes") from None
        except files.FileGone:
            raise Refused(f"{name!r} is no longer in the desk's file store") from None
        except files.StoreUnavailable as exc:
            raise Unavailable(f"{name!r}: {exc}") from None
        return Upload(name=name, mime=(att.mime or stored.meta.mime).lower(), data=stored.data, kind=att.kind)

    async def upload(self, api: CommunityApi, peer_id: int, up: Upload) -> str:
        """VK's attachment string for the file (``photo<owner>_<id>_<key>``, ``doc...``, ``audio_message...``)."""
        if up.mime in PHOTO_TYPES and files.image_matches(up.mime, up.data[:16]):
            try:
                return await self._photo(api, peer_id, up)
            except Refused as exc:
                log.info("VK refused an image as a photo; sending it as a document", extra={"reason": str(exc)})
        if up.kind == "voice" and up.data.startswith(b"OggS"):
            try:
                return await self._doc(api, peer_id, up, "audio_message")
            except Refused as exc:
                log.info("VK refused a voice message; sending it as a document", extra={"reason": str(exc)})
        return await self._doc(api, peer_id, up, "doc")

    async def _photo(self, api: CommunityApi, peer_id: int, up: Upload) -> str:
        for attempt in (1, 2):
            server = await self._call(api, "photos.getMessagesUploadServer", {"peer_id": str(peer_id)})
            answer = await self._post(_upload_url(server), "photo", up)
            if answer.get("error") or answer.get("photo") in (None, "", "[]"):
                raise Refused(f"the upload server did not take the image: {answer.get('error') or 'no photo'}")
            values = {"photo": str(answer["photo"]), "server": str(answer.get("server", "")), "hash": str(answer.get("hash", ""))}
            try:
                saved = await self._call(api, "photos.saveMessagesPhoto", values, refusals=(PARAM_INVALID,))
            except _Stale:
                if attempt == 2:
                    raise Unavailable("photos.saveMessagesPhoto: Invalid hash twice") from None
                continue  # the upload URL went stale between the two calls: a fresh one
            photo = saved[0] if isinstance(saved, list) and saved and isinstance(saved[0], dict) else None
            if photo is None:
                raise Unavailable("photos.saveMessagesPhoto answered no photo")
            return _attachment("photo", photo)
        raise Unavailable("unreachable")  # pragma: no cover - the loop returns or raises

    async def _doc(self, api: CommunityApi, peer_id: int, up: Upload, doc_type: str) -> str:
        for attempt in (1, 2):
            server = await self._call(api, "docs.getMessagesUploadServer", {"type": doc_type, "peer_id": str(peer_id)})
            answer = await self._post(_upload_url(server), "file", up)
            if answer.get("error") or not answer.get("file"):
                raise Refused(f"VK did not take {up.name!r}: {answer.get('error') or 'no file'}")
            try:
                saved = await self._call(api, "docs.save", {"file": str(answer["file"]), "title": up.name})
            except _Stale:
                if attempt == 2:
                    raise Unavailable("docs.save failed twice") from None
                continue
            kind = saved.get("type") if isinstance(saved, dict) else None
            item = saved.get(kind) if isinstance(saved, dict) and isinstance(kind, str) else None
            if not isinstance(item, dict):
                raise Unavailable("docs.save answered no document")
            return _attachment(str(kind), item)
        raise Unavailable("unreachable")  # pragma: no cover

    async def _call(self, api: CommunityApi, method: str, values: dict[str, str], refusals: tuple[int, ...] = ()) -> Any:
        try:
            return await api.call(method, values)
        except VkError as exc:
            if exc.code in (INVALID_HASH, SAVE_FAILED):
                raise _Stale(str(exc)) from None
            if exc.code in refusals:
                raise Refused(str(exc)) from None
            if exc.retryable:
                raise Unavailable(str(exc)) from None
            raise Refused(str(exc)) from None
        except VkUnreachable as exc:
            raise Unavailable(str(exc)) from None

    async def _post(self, url: str, field: str, up: Upload) -> dict[str, Any]:
        if not allowed(url, self.hosts):
            raise Unavailable(f"the upload server is not on a VK host ({urlsplit(url).hostname or '?'})")
        form = aiohttp.FormData()
        form.add_field(field, up.data, filename=up.name, content_type=up.mime or "application/octet-stream")
        http = await self.http()
        try:
            async with http.post(url, data=form, allow_redirects=False) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise Unavailable(f"the upload server answered HTTP {resp.status}")
                if resp.status != 200:
                    raise Refused(f"the upload server answered HTTP {resp.status}")
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"upload failed: {type(exc).__name__}") from None
        if not isinstance(answer, dict):
            raise Unavailable("the upload server answered no JSON object")
        return answer


class _Stale(Exception):
    """The upload URL or hash was no longer valid: upload again with a fresh one."""


def _upload_url(server: Any) -> str:
    url = server.get("upload_url") if isinstance(server, dict) else None
    if not isinstance(url, str) or not url:
        raise Unavailable("VK answered no upload_url")
    return url


def _attachment(kind: str, item: dict[str, Any]) -> str:
    owner, ident, key = item.get("owner_id"), item.get("id"), item.get("access_key")
    if not isinstance(owner, int) or not isinstance(ident, int):
        raise Unavailable(f"VK saved the {kind} without an id")
    return f"{kind}{owner}_{ident}" + (f"_{key}" if isinstance(key, str) and key else "")


def _type_and_name(att: Attachment, data: bytes) -> tuple[str, str]:
    vk_type = att.extra.get("vk_type", "")
    if vk_type in ("photo", "graffiti"):
        mime = files.sniff_image(data[:16]) or "image/jpeg"
        return mime, att.name if att.name and "." in att.name else f"photo{mimetypes.guess_extension(mime) or '.jpg'}"
    if vk_type == "audio_message":
        mime = "audio/ogg" if data.startswith(b"OggS") else att.mime or "audio/mpeg"
        return mime, "voice.ogg" if mime == "audio/ogg" else "voice.mp3"
    ext = att.extra.get("ext", "")
    name = att.name or "document"
    if ext and not name.lower().endswith("." + ext.lower()):
        name = f"{name}.{ext}"
    guessed, _ = mimetypes.guess_type(name)
    return att.mime or guessed or files.sniff_image(data[:16]) or "application/octet-stream", name
