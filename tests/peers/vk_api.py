"""A local VK API and a Callback API sender, for tests.

``FakeVk`` answers ``/method/<name>`` like api.vk.ru does (API 5.199): the
parameters come as query string or form body and include ``access_token``
and ``v``; success is ``{"response": ...}``, failure is HTTP 200 with
``{"error": {"error_code", "error_msg", "request_params": [{"key", "value"}]}}``.
``messages.send`` is deduplicated by ``random_id`` per community and peer as
VK does. Tests can make it answer error 6 for the next N calls, refuse a peer
with 901, or hold ``users.get`` until released; every call is recorded.
``messages.setActivity`` ("typing...") is kept in :attr:`FakeVk.activities`.

Files, as dev.vk.com "Uploading files" documents them (VK API schema 5.199 for
the error codes):

- ``photos.getMessagesUploadServer`` / ``docs.getMessagesUploadServer``
  (``type`` = ``doc`` | ``audio_message``) answer an ``upload_url`` on this
  peer. The photo server takes the field ``photo``: JPG, PNG or GIF, at most
  50 MB, width + height at most 14000 and a side ratio of at most 20; it
  answers ``{"server", "photo", "hash"}`` and, for an image it did not take,
  ``"photo": "[]"``, which ``photos.saveMessagesPhoto`` then refuses with
  error 100 ("photos_list is invalid"). The document server takes the field
  ``file`` (not MP3 nor an executable, at most 200 MB; a voice message must
  be Ogg) and answers ``{"file"}`` or ``{"error"}``. Saving an upload twice, or
  one made through an upload URL that expired (:meth:`FakeVk.expire_uploads`),
  fails: ``photos.saveMessagesPhoto`` with 121 "Invalid hash", ``docs.save``
  with 105 "Couldn't save file". ``messages.send`` takes only attachments
  saved here (100 otherwise); :attr:`FakeVk.media` keeps their bytes.
- Files clients send are served from :meth:`FakeVk.host_file` links; a
  document's link redirects to the storage host as ``vk.com/doc...`` does.

``CallbackSender`` POSTs Callback API events to a gateway like VK does
(JSON body, ``X-Retry-Counter`` on retries).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

ERRORS = {
    5: "User authorization failed: invalid access_token (4).",
    6: "Too many requests per second",
    8: "Invalid request: v is required",
    9: "Flood control",
    10: "Internal server error",
    29: "Rate limit reached",
    100: "One of the parameters specified was missing or invalid",
    105: "Couldn't save file",
    121: "Invalid hash",
    901: "Can't send messages for users without permission",
    902: "Can't send messages to this user due to their privacy settings",
    914: "Message is too long",
}
MAX_MESSAGE = 9000
INVALID = "One of the parameters specified was missing or invalid: "
MAX_PHOTO = 50 * 1024 * 1024
MAX_DOC = 200 * 1024 * 1024
PHOTO_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


@dataclass
class Call:
    method: str
    params: dict[str, str]
    group_id: int  # the community whose token was used (0: unknown token)
    at: float = field(default_factory=time.monotonic)


@dataclass
class Sent:
    group_id: int
    peer_id: int
    random_id: int
    message: str
    message_id: int
    attachment: str = ""


@dataclass
class Media:
    """A file saved through the upload servers: what messages.send may attach."""

    kind: str  # photo | doc | audio_message
    owner_id: int
    id: int
    access_key: str
    name: str
    data: bytes

    @property
    def attachment(self) -> str:
        return f"{self.kind}{self.owner_id}_{self.id}" + (f"_{self.access_key}" if self.access_key else "")


@dataclass
class _Upload:
    kind: str  # photo | doc | audio_message
    group_id: int
    epoch: int
    name: str = ""
    data: bytes = b""
    saved: bool = False


@dataclass
class FakeVk:
    tokens: dict[str, int]  # access token -> community id
    users: dict[int, tuple[str, str]] = field(default_factory=dict)  # user id -> (first, last)
    confirmation_codes: dict[int, str] = field(default_factory=dict)  # community id -> code
    calls: list[Call] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    denied_peers: dict[int, int] = field(default_factory=dict)  # peer id -> error code (901, 902...)
    activities: list[tuple[int, int, str]] = field(default_factory=list)  # (group, peer, type) of messages.setActivity
    users_gate: asyncio.Event | None = None  # when set to an unset Event, users.get waits for it
    failing_groups: dict[int, int] = field(default_factory=dict)  # community id -> error code for all its calls
    media: dict[str, Media] = field(default_factory=dict)  # attachment string -> saved file
    hosted: dict[str, bytes] = field(default_factory=dict)  # path -> bytes of files clients sent
    _uploads: dict[str, _Upload] = field(default_factory=dict)  # upload token -> upload
    _upload_epoch: int = 0
    _expire_after_upload: bool = False
    redirects: dict[str, str] = field(default_factory=dict)  # path -> where it redirects to
    _fail: dict[str, list[int]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    url: str = ""

    # -- test controls ------------------------------------------------------

    def fail_next(self, method: str, code: int, times: int = 1) -> None:
        """Answer ``code`` to the next ``times`` calls of ``method``."""
        self._fail.setdefault(method, []).extend([code] * times)

    def deny_peer(self, peer_id: int, code: int = 901) -> None:
        self.denied_peers[peer_id] = code

    def expire_uploads(self) -> None:
        """Every upload URL handed out so far is stale: saving what went through it fails."""
        self._upload_epoch += 1

    def expire_after_next_upload(self) -> None:
        """The next upload goes through, then its URL expires before it is saved (a slow sender)."""
        self._expire_after_upload = True

    def redirect(self, name: str, location: str) -> str:
        """A link on this peer that redirects to ``location``."""
        self.redirects[name] = location
        return f"{self.url}/doc-link/{name}"

    def host_file(self, name: str, data: bytes) -> str:
        """The link a callback carries for a file a client sent (``/files/<name>`` on this peer)."""
        self.hosted[name] = data
        return f"{self.url}/files/{name}"

    def doc_link(self, name: str, data: bytes) -> str:
        """A document's link as VK gives it: it redirects to the file on the storage host."""
        self.host_file(name, data)
        return f"{self.url}/doc-link/{name}?hash=0a1b2c&dl=1"

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def sent_to(self, peer_id: int) -> list[Sent]:
        return [s for s in self.sent if s.peer_id == peer_id]

    # -- server ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/method/{name}", self._method)
        app.router.add_post("/upload/{token}", self._upload)
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/doc-link/{name}", self._doc_link)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.users_gate is not None:
            self.users_gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _method(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            form = await request.post()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
        group_id = self.tokens.get(params.get("access_token", ""), 0)
        self.calls.append(Call(name, {k: v for k, v in params.items() if k != "access_token"}, group_id))
        if not group_id:
            return self._error(5, name, params)
        if not params.get("v"):
            return self._error(8, name, params)
        if group_id in self.failing_groups:
            return self._error(self.failing_groups[group_id], name, params)
        queued = self._fail.get(name)
        if queued:
            return self._error(queued.pop(0), name, params)
        handler = {
            "messages.send": self._send,
            "messages.setActivity": self._set_activity,
            "users.get": self._users_get,
            "groups.getCallbackConfirmationCode": self._confirmation_code,
            "photos.getMessagesUploadServer": self._upload_server,
            "docs.getMessagesUploadServer": self._upload_server,
            "photos.saveMessagesPhoto": self._save_photo,
            "docs.save": self._save_doc,
        }.get(name)
        if handler is None:
            return self._error(3, name, params, "Unknown method passed")
        return await handler(group_id, name, params)

    async def _set_activity(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        """``messages.setActivity``: 1; ``type`` is ``typing`` or ``audiomessage``; a refused peer gets its error."""
        try:
            peer_id = int(params["peer_id"])
        except (KeyError, ValueError):
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: peer_id")
        if params.get("type") not in ("typing", "audiomessage"):
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: type")
        if peer_id in self.denied_peers:
            return self._error(self.denied_peers[peer_id], name, params)
        self.activities.append((group_id, peer_id, params["type"]))
        return web.json_response({"response": 1})

    async def _send(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        try:
            peer_id = int(params["peer_id"])
            random_id = int(params["random_id"])
        except (KeyError, ValueError):
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: peer_id, random_id")
        if not -(2**31) <= random_id < 2**31:
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: random_id")
        message = params.get("message", "")
        attachment = params.get("attachment", "")
        if not message and not attachment:
            return self._error(100, name, params, "One of the parameters specified was missing or invalid: message is empty")
        for item in filter(None, attachment.split(",")):
            if item not in self.media:
                return self._error(100, name, params, INVALID + "attachment is invalid")
        if len(message) > MAX_MESSAGE:
            return self._error(914, name, params)
        if peer_id in self.denied_peers:
            return self._error(self.denied_peers[peer_id], name, params)
        for s in self.sent:
            if random_id and (s.group_id, s.peer_id, s.random_id) == (group_id, peer_id, random_id):
                return web.json_response({"response": s.message_id})  # VK: the same send, not a new message
        sent = Sent(group_id, peer_id, random_id, message, next(self._ids), attachment)
        self.sent.append(sent)
        return web.json_response({"response": sent.message_id})

    async def _users_get(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        if self.users_gate is not None:
            await self.users_gate.wait()
        out = []
        for raw in params.get("user_ids", "").split(","):
            if raw.strip().isdigit() and int(raw) in self.users:
                first, last = self.users[int(raw)]
                out.append(
                    {"id": int(raw), "first_name": first, "last_name": last, "can_access_closed": True, "is_closed": False}
                )
        return web.json_response({"response": out})

    async def _confirmation_code(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        if params.get("group_id") != str(group_id) or group_id not in self.confirmation_codes:
            return self._error(15, name, params, "Access denied")
        return web.json_response({"response": {"code": self.confirmation_codes[group_id]}})

    # -- files --------------------------------------------------------------

    async def _upload_server(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        if name.startswith("photos."):
            kind = "photo"
        else:
            kind = params.get("type", "doc")
            if kind not in ("doc", "audio_message"):
                return self._error(100, name, params, INVALID + "type is invalid")
        peer = params.get("peer_id", "")
        if peer.lstrip("-").isdigit() and int(peer) in self.denied_peers:
            return self._error(901, name, params)
        token = secrets.token_hex(8)
        self._uploads[token] = _Upload(kind=kind, group_id=group_id, epoch=self._upload_epoch)
        answer: dict[str, Any] = {"upload_url": f"{self.url}/upload/{token}"}
        if kind == "photo":
            answer.update(album_id=-64, group_id=group_id)
        return web.json_response({"response": answer})

    async def _upload(self, request: web.Request) -> web.Response:
        up = self._uploads.get(request.match_info["token"])
        if up is None:
            return web.json_response({"error": "invalid upload url"})
        form = await request.post()
        part = form.get("photo" if up.kind == "photo" else "file")
        self.calls.append(Call("upload:" + up.kind, {"name": getattr(part, "filename", "") or ""}, up.group_id))
        if not isinstance(part, web.FileField):
            if up.kind == "photo":
                return web.json_response({"server": 1, "photo": "[]", "hash": secrets.token_hex(8)})
            return web.json_response({"error": "file is undefined"})
        data = part.file.read()
        up.name, up.data = part.filename or "", data
        if self._expire_after_upload:
            self._expire_after_upload = False
            self.expire_uploads()
        if up.kind == "photo":
            photo = "[]" if _photo_problem(data) else json.dumps([{"photo": secrets.token_hex(5) + ":w", "sizes": []}])
            return web.json_response({"server": 1, "photo": photo, "hash": request.match_info["token"]})
        problem = _doc_problem(up.kind, up.name, data)
        if problem:
            return web.json_response({"error": problem})
        return web.json_response({"file": f"{up.group_id}|0|0|1|{request.match_info['token']}|{len(data)}"})

    def _take_upload(self, token: str, kind: str) -> _Upload | None:
        up = self._uploads.get(token)
        if up is None or up.kind not in kind.split("|") or up.saved or up.epoch != self._upload_epoch or not up.data:
            return None
        up.saved = True
        return up

    async def _save_photo(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        if params.get("photo", "") in ("", "[]"):
            return self._error(100, name, params, INVALID + "photos_list is invalid")
        up = self._take_upload(params.get("hash", ""), "photo")
        if up is None or up.group_id != group_id:
            return self._error(121, name, params, "Invalid hash")
        saved = self._saved("photo", group_id, up)
        return web.json_response({"response": [{"id": saved.id, "owner_id": saved.owner_id, "access_key": saved.access_key}]})

    async def _save_doc(self, group_id: int, name: str, params: dict[str, str]) -> web.Response:
        fields = params.get("file", "").split("|")
        up = self._take_upload(fields[4], "doc|audio_message") if len(fields) == 6 else None
        if up is None or up.group_id != group_id:
            return self._error(105, name, params, "Couldn't save file")
        up.name = params.get("title") or up.name
        saved = self._saved(up.kind, group_id, up)
        item: dict[str, Any] = {"id": saved.id, "owner_id": saved.owner_id, "access_key": saved.access_key}
        if up.kind == "doc":
            item.update(title=up.name, size=len(up.data), ext=up.name.rsplit(".", 1)[-1] if "." in up.name else "")
        return web.json_response({"response": {"type": up.kind, up.kind: item}})

    def _saved(self, kind: str, group_id: int, up: _Upload) -> Media:
        media = Media(kind, -group_id, next(self._ids), secrets.token_hex(6), up.name, up.data)
        self.media[media.attachment] = media
        return media

    async def _file(self, request: web.Request) -> web.Response:
        data = self.hosted.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    async def _doc_link(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        raise web.HTTPFound(self.redirects.get(name, f"/files/{name}"))

    def _error(self, code: int, method: str, params: dict[str, str], msg: str = "") -> web.Response:
        shown = [{"key": "method", "value": method}, {"key": "oauth", "value": "1"}]
        shown += [{"key": k, "value": v} for k, v in params.items() if k != "access_token"]
        return web.json_response(
            {"error": {"error_code": code, "error_msg": msg or ERRORS.get(code, "Error"), "request_params": shown}}
        )


def _photo_problem(data: bytes) -> str:
    if len(data) > MAX_PHOTO or not data.startswith(PHOTO_MAGIC):
        return "not a photo VK takes"
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        if width + height > 14000 or max(width, height) > 20 * max(1, min(width, height)):
            return "dimensions"
    return ""


def _doc_problem(kind: str, name: str, data: bytes) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if kind == "audio_message":
        return "" if data.startswith(b"OggS") else "audio message must be ogg"
    if len(data) > MAX_DOC:
        return "file is too big"
    if ext in ("mp3", "exe", "bat", "cmd", "sh", "msi", "apk") or data.startswith((b"ID3", b"MZ")):
        return "file type is not allowed"
    return ""


class CallbackSender:
    """Sends Callback API events to a gateway URL the way VK does."""

    def __init__(self, http: aiohttp.ClientSession, url: str, group_id: int, secret: str) -> None:
        self.http = http
        self.url = url
        self.group_id = group_id
        self.secret = secret
        self._ids = itertools.count(1000)

    def event(
        self, kind: str, obj: dict[str, Any] | None = None, *, event_id: str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": kind,
            "event_id": event_id or secrets.token_hex(20),
            "v": "5.199",
            "object": obj or {},
            "group_id": self.group_id,
            "secret": self.secret,
        }
        body.update(overrides)
        return body

    def message_new(
        self,
        text: str,
        *,
        from_id: int = 1001,
        peer_id: int | None = None,
        attachments: list[dict[str, Any]] | None = None,
        event_id: str | None = None,
        date: int = 1_700_000_000,
    ) -> dict[str, Any]:
        message = {
            "id": next(self._ids),
            "date": date,
            "peer_id": peer_id if peer_id is not None else from_id,
            "from_id": from_id,
            "text": text,
            "out": 0,
            "conversation_message_id": 1,
            "attachments": attachments or [],
            "fwd_messages": [],
            "important": False,
            "is_hidden": False,
        }
        client_info = {"button_actions": ["text"], "keyboard": True, "inline_keyboard": True, "carousel": True, "lang_id": 0}
        return self.event("message_new", {"message": message, "client_info": client_info}, event_id=event_id)

    def message_read(self, peer_id: int, read_message_id: int, *, event_id: str | None = None) -> dict[str, Any]:
        """The client read the community's dialog up to a message (VK: ``from_id``, ``peer_id``,
        ``read_message_id``, ``conversation_message_id``)."""
        obj = {"from_id": peer_id, "peer_id": peer_id, "read_message_id": read_message_id, "conversation_message_id": 0}
        return self.event("message_read", obj, event_id=event_id)

    def confirmation(self, *, with_secret: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "confirmation", "group_id": self.group_id}
        if with_secret:
            body["secret"] = self.secret
        return body

    async def post(self, body: dict[str, Any] | bytes | str, *, retry: int = 0) -> tuple[int, str]:
        """POST one event; ``retry`` > 0 sets ``X-Retry-Counter`` like VK's resends. Returns (status, body text)."""
        data = json.dumps(body, ensure_ascii=False).encode() if isinstance(body, dict) else body
        headers = {"Content-Type": "application/json"}
        if retry:
            headers["X-Retry-Counter"] = str(retry)
        async with self.http.post(self.url, data=data, headers=headers) as resp:
            return resp.status, await resp.text()
