"""Files in the widget: visitors' uploads, and links a visitor may open.

**Uploads.** ``POST /files/<account>`` (multipart field ``file``) with the
visitor token in ``Authorization: Bearer``: the file is checked (size, type,
an image's bytes) and kept in ``ol-webchat-files`` as
``<account>/<visitor>/<file id>``; the answer names its id, which the next
``message`` frame lists in ``files``. An upload nobody sends is deleted with
the store's age.

**Links.** Every file the widget shows (operators' files, the visitor's own)
is served by this gateway from the object store, at a link signed for that
visitor: ``/files/<claim>/<signature>/<name>``, where the claim names the
account, the visitor, the file's reference and when the link expires
(``OPENLINES_WEBCHAT_FILE_LINK_TTL``). Nothing else opens a file here, and no
link points at the desk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

from nats.js import JetStreamContext

from openlines import files, subjects
from openlines.envelopes import Attachment

LINK_VERSION = "f1"
READABLE = frozenset({subjects.OBJ_DESK_FILES, subjects.OBJ_WEBCHAT_FILES})


class BadLink(Exception):
    """Not a link we signed, for another file, or expired."""


@dataclass(frozen=True, slots=True)
class Claim:
    account: str
    visitor: str
    ref: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Links:
    """Links to files, each signed for one visitor of one account."""

    def __init__(self, secret: str, ttl: int) -> None:
        # A key of its own, derived from the webchat secret: a link signature is never a token signature.
        self._key = hmac.new(secret.encode(), b"openlines webchat file links", hashlib.sha256).digest()
        self.ttl = ttl

    def _sign(self, claim: str) -> str:
        return _b64(hmac.new(self._key, claim.encode(), hashlib.sha256).digest())

    def path(self, account: str, visitor: str, att: Attachment, now: float) -> str:
        """The path (relative to this gateway) at which ``visitor`` may open ``att``; "" when it is not a stored file."""
        parsed = files.parse_ref(att.ref)
        if parsed is None or parsed[0] not in READABLE:
            return ""
        claim = _b64(f"{LINK_VERSION}|{account}|{visitor}|{att.ref}|{int(now) + self.ttl}".encode())
        name = quote(files.clean_name(att.name or att.kind), safe="")
        return f"/files/{claim}/{self._sign(claim)}/{name}"

    def verify(self, claim: str, signature: str, now: float) -> Claim:
        if not hmac.compare_digest(self._sign(claim).encode(), signature.encode("utf-8", "surrogateescape")):
            raise BadLink("not a link of this server")
        try:
            version, account, visitor, ref, expires = _unb64(claim).decode().split("|")
            until = int(expires)
        except ValueError:
            raise BadLink("not a link of this server") from None
        if version != LINK_VERSION:
            raise BadLink("not a link of this server")
        if until < now:
            raise BadLink("the link has expired; open the chat again for a fresh one")
        return Claim(account=account, visitor=visitor, ref=ref, expires=until)


@dataclass(frozen=True, slots=True)
class Upload:
    file_id: str
    name: str
    mime: str
    size: int
    kind: files.Kind


class VisitorFiles:
    """``ol-webchat-files``: what visitors upload, one folder per visitor."""

    def __init__(self, js: JetStreamContext, *, max_age: float, replicas: int) -> None:
        self.js = js
        self.max_age = max_age
        self.replicas = replicas
        self.reader = files.Reader(js, allowed=READABLE)
        self.store = files.OwnStore(
            js,
            subjects.OBJ_WEBCHAT_FILES,
            description="files visitors send through the website widget",
            max_age=max_age,
            replicas=replicas,
        )

    @staticmethod
    def key(account: str, visitor: str, file_id: str) -> str:
        return f"{account}/{visitor}/{file_id}"

    async def put(self, account: str, visitor: str, name: str, mime: str, data: bytes) -> Upload:
        file_id = secrets.token_urlsafe(18)
        meta = files.Meta(name=name, mime=mime, uploaded_at=time.time())
        await files.put_once(await self.store(), self.key(account, visitor, file_id), data, meta)
        return Upload(file_id=file_id, name=name, mime=mime, size=len(data), kind=files.kind_of(mime))

    def reader_ref(self, account: str, visitor: str, file_id: str) -> str:
        return files.ref(subjects.OBJ_WEBCHAT_FILES, self.key(account, visitor, file_id))

    async def attachment(self, account: str, visitor: str, file_id: str) -> Attachment | None:
        """The attachment for a file this visitor uploaded; None when there is none (any more)."""
        ref = self.reader_ref(account, visitor, file_id)
        try:
            meta, size = await self.reader.info(ref)
        except files.FileGone:
            return None
        return Attachment(kind=files.kind_of(meta.mime), name=meta.name, mime=meta.mime, size=size, ref=ref)


def owns(claim: Claim) -> bool:
    """A visitor's link to one of the store's files opens only that visitor's own uploads (or an operator's file)."""
    parsed = files.parse_ref(claim.ref)
    if parsed is None or parsed[0] not in READABLE:
        return False
    store, key = parsed
    return store != subjects.OBJ_WEBCHAT_FILES or key.startswith(f"{claim.account}/{claim.visitor}/")
