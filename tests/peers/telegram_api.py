"""A local Telegram Bot API for tests (aiohttp), following the documented shapes.

- ``POST|GET /bot<token>/<method>`` with parameters as a query string,
  ``application/x-www-form-urlencoded``, JSON or ``multipart/form-data``
  (files), like the real API; answers ``{"ok": true, "result": ...}`` or
  ``{"ok": false, "error_code": N, "description": "...", "parameters": {...}}``.
- Methods: getMe, sendMessage, sendPhoto, sendDocument (and the other send*
  methods the gateway uses), getFile, setWebhook, deleteWebhook,
  getWebhookInfo, answerCallbackQuery, sendChatAction (recorded in
  :attr:`FakeTelegram.chat_actions`). Unknown token -> 401, unknown method -> 404.
- Files clients sent (:meth:`FakeTelegram.add_file`): ``getFile`` answers a
  ``File`` with ``file_path``, downloadable from ``/file/bot<token>/<file_path>``
  as documented; bots may download up to 20 MB ("Bad Request: file is too
  big"), an unknown id is "Bad Request: invalid file_id", and a link that
  expired (:meth:`FakeTelegram.expire_links`; Telegram keeps one at least an
  hour) answers 404.
- Uploads as the Bot API takes them: a request over 50 MB is HTTP 413
  "Request Entity Too Large"; ``sendPhoto`` takes photos up to 10 MB
  ("PHOTO_SAVE_FILE_INVALID"), whose width + height is at most 10000 and
  ratio at most 20 ("PHOTO_INVALID_DIMENSIONS"), and that are images
  ("IMAGE_PROCESS_FAILED"). Every uploaded file gets a ``file_id`` the bot can
  send again and download with ``getFile``.
- Records every call (:attr:`FakeTelegram.calls`); can be told to answer 429
  with ``retry_after`` for a chat, 403 "bot was blocked by the user", 400
  "chat not found" or 500 for a chat.
- :meth:`FakeTelegram.deliver` POSTs an update to the bot's webhook with the
  ``X-Telegram-Bot-Api-Secret-Token`` header, as Telegram does, and keeps
  ``pending_update_count`` / ``last_error_message`` like getWebhookInfo shows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
SEND_METHODS = {
    "sendmessage": "text",
    "sendphoto": "photo",
    "senddocument": "document",
    "sendvoice": "voice",
    "sendaudio": "audio",
    "sendvideo": "video",
    "sendsticker": "sticker",
    "sendlocation": "location",
    "sendcontact": "contact",
}
CHAT_ACTIONS = {
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
}
MAX_UPLOAD = 50 * 1024 * 1024  # the Bot API's limit for files bots upload
MAX_DOWNLOAD = 20 * 1024 * 1024  # ... and for files bots download (getFile)
MAX_PHOTO = 10 * 1024 * 1024
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"RIFF")
JSON_PARAMS = {"allowed_updates", "reply_markup", "entities", "caption_entities", "link_preview_options", "reply_parameters"}


@dataclass
class UploadedFile:
    filename: str
    content_type: str
    data: bytes


@dataclass
class TgFile:
    file_id: str
    data: bytes
    path: str  # file_path as getFile answers it, e.g. "photos/file_3.jpg"

    @property
    def unique_id(self) -> str:
        return "U" + hashlib.sha256(self.data).hexdigest()[:15]


@dataclass
class Call:
    token: str
    method: str  # as documented, e.g. "sendMessage"
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    at: float  # time.monotonic() when received
    status: int = 200

    @property
    def chat_id(self) -> str:
        return str(self.params.get("chat_id", ""))


@dataclass
class Webhook:
    url: str = ""
    secret: str = ""
    allowed_updates: list[str] = field(default_factory=list)
    max_connections: int = 40
    pending: int = 0
    last_error_date: int = 0
    last_error_message: str = ""


@dataclass
class ChatRule:
    status: int
    description: str
    times: int  # how many sends it applies to; -1 = until cleared
    retry_after: int = 0


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _error(status: int, description: str, **parameters: Any) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=status)


class FakeTelegram:
    def __init__(self) -> None:
        self.app = web.Application(client_max_size=60 * 1024 * 1024)
        self.app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self.app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self.calls: list[Call] = []
        self.chat_actions: list[tuple[str, str]] = []  # (chat_id, action) of each sendChatAction taken
        self.webhooks: dict[str, Webhook] = {}
        self._tokens: set[str] = set()
        self._rules: dict[str, ChatRule] = {}
        self._message_ids = itertools.count(1000)
        self._file_ids = itertools.count(1)
        self._update_ids = itertools.count(500_000)
        self.files: dict[str, TgFile] = {}  # file_id -> file
        self._links = 0  # bumped by expire_links(): file paths carry it
        self.downloads: list[str] = []  # file paths fetched
        self.max_upload = MAX_UPLOAD  # tests lower it rather than upload 50 MB
        self.stale_links = False  # getFile answers a link that has already expired (it lives "at least 1 hour")
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.base = ""

    # -- life -------------------------------------------------------------

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}"
        return self.base

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_bot(self, token: str) -> None:
        self._tokens.add(token)
        self.webhooks.setdefault(token, Webhook())

    # -- test controls ----------------------------------------------------

    def rate_limit(self, chat_id: int | str, retry_after: int, times: int = 1) -> None:
        """The next ``times`` sends to the chat get 429 with ``parameters.retry_after``."""
        self._rules[str(chat_id)] = ChatRule(429, f"Too Many Requests: retry after {retry_after}", times, retry_after)

    def block(self, chat_id: int | str) -> None:
        self._rules[str(chat_id)] = ChatRule(403, "Forbidden: bot was blocked by the user", -1)

    def chat_not_found(self, chat_id: int | str) -> None:
        self._rules[str(chat_id)] = ChatRule(400, "Bad Request: chat not found", -1)

    def fail(self, chat_id: int | str, times: int = 1, status: int = 500) -> None:
        self._rules[str(chat_id)] = ChatRule(status, "Internal Server Error", times)

    def add_file(self, file_id: str, data: bytes, *, folder: str = "documents", ext: str = "") -> TgFile:
        """A file a client sent (its ``file_id`` is what the update carries)."""
        n = len(self.files) + 1
        f = TgFile(file_id=file_id, data=data, path=f"{folder}/file_{n}{ext}")
        self.files[file_id] = f
        return f

    def expire_links(self) -> None:
        """Every file link given so far stops working (a new getFile gives a new one)."""
        self._links += 1

    def clear(self, chat_id: int | str) -> None:
        self._rules.pop(str(chat_id), None)

    def sent(self, chat_id: int | str | None = None, method: str | None = None, *, ok_only: bool = True) -> list[Call]:
        """send* calls (to one chat / of one method), those answered 200 by default."""
        return [
            c
            for c in self.calls
            if c.method.lower() in SEND_METHODS
            and (chat_id is None or c.chat_id == str(chat_id))
            and (method is None or c.method == method)
            and (not ok_only or c.status == 200)
        ]

    def called(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method.lower() == method.lower()]

    # -- Telegram -> the bot's webhook -------------------------------------

    def next_update_id(self) -> int:
        return next(self._update_ids)

    async def deliver(self, token: str, update: dict[str, Any] | bytes, *, secret: str | None = None) -> tuple[int, Any]:
        """POST one update to the bot's webhook as Telegram does; (status, decoded body)."""
        hook = self.webhooks[token]
        if not hook.url:
            raise AssertionError("no webhook set for this bot (call setWebhook first)")
        if self._client is None:
            self._client = aiohttp.ClientSession()
        headers = {"Content-Type": "application/json"}
        sec = hook.secret if secret is None else secret
        if sec:
            headers[SECRET_HEADER] = sec
        data = update if isinstance(update, bytes) else json.dumps(update).encode()
        hook.pending += 1
        async with self._client.post(hook.url, data=data, headers=headers) as resp:
            text = await resp.text()
            status = resp.status
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        if 200 <= status < 300:
            hook.pending -= 1
        else:
            hook.last_error_date = int(time.time())
            hook.last_error_message = f"Wrong response from the webhook: {status} {resp.reason}"
        return status, body

    # -- the API ------------------------------------------------------------

    async def _params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
        params: dict[str, Any] = dict(request.query)
        files: dict[str, UploadedFile] = {}
        if request.method == "POST" and request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                form = await request.post()
                for key, value in form.items():
                    if isinstance(value, web.FileField):
                        files[key] = UploadedFile(value.filename, value.content_type, value.file.read())
                    else:
                        params[key] = value
        # multipart uploads may name their file part: "document": "attach://<part name>"
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in files:
                files[key] = files.pop(value[9:])
                del params[key]
        for key in JSON_PARAMS & params.keys():
            if isinstance(params[key], str):
                params[key] = json.loads(params[key])
        return params, files

    def _bot_user(self, token: str) -> dict[str, Any]:
        bot_id = int(token.split(":", 1)[0])
        return {"id": bot_id, "is_bot": True, "first_name": f"Bot {bot_id}", "username": f"bot{bot_id}_bot"}

    async def _download(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        path = request.match_info["path"]
        epoch, _, real = path.partition("/")
        found = next((f for f in self.files.values() if f.path == real), None)
        if token not in self._tokens or found is None or epoch != f"v{self._links}":
            return _error(404, "Not Found")
        self.downloads.append(real)
        return web.Response(body=found.data, content_type="application/octet-stream")

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        method = request.match_info["method"]
        params, files = await self._params(request)
        if max((request.content_length or 0), sum(len(f.data) for f in files.values())) > self.max_upload:
            self.calls.append(Call(token=token, method=method, params=params, files={}, at=time.monotonic(), status=413))
            return _error(413, "Request Entity Too Large")
        call = Call(token=token, method=method, params=params, files=files, at=time.monotonic())
        self.calls.append(call)
        response = self._answer(token, method, params, files)
        call.status = response.status
        return response

    def _answer(self, token: str, method: str, params: dict[str, Any], files: dict[str, UploadedFile]) -> web.Response:
        if token not in self._tokens:
            return _error(401, "Unauthorized")
        name = method.lower()
        hook = self.webhooks[token]
        if name == "getme":
            return web.json_response({"ok": True, "result": self._bot_user(token)})
        if name == "setwebhook":
            url = str(params.get("url", ""))
            hook.url = url
            hook.secret = str(params.get("secret_token", ""))
            hook.allowed_updates = list(params.get("allowed_updates") or [])
            hook.max_connections = int(params.get("max_connections", 40))
            if str(params.get("drop_pending_updates", "")).lower() == "true":
                hook.pending = 0
            return web.json_response({"ok": True, "result": True, "description": "Webhook was set"})
        if name == "deletewebhook":
            hook.url = ""
            hook.secret = ""
            if str(params.get("drop_pending_updates", "")).lower() == "true":
                hook.pending = 0
            return web.json_response({"ok": True, "result": True, "description": "Webhook was deleted"})
        if name == "getwebhookinfo":
            info: dict[str, Any] = {
                "url": hook.url,
                "has_custom_certificate": False,
                "pending_update_count": hook.pending,
                "max_connections": hook.max_connections,
            }
            if hook.allowed_updates:
                info["allowed_updates"] = hook.allowed_updates
            if hook.last_error_date:
                info["last_error_date"] = hook.last_error_date
                info["last_error_message"] = hook.last_error_message
            return web.json_response({"ok": True, "result": info})
        if name == "getfile":
            found = self.files.get(str(params.get("file_id", "")))
            if found is None:
                return _error(400, "Bad Request: invalid file_id")
            if len(found.data) > MAX_DOWNLOAD:
                return _error(400, "Bad Request: file is too big")
            result = {
                "file_id": found.file_id,
                "file_unique_id": found.unique_id,
                "file_size": len(found.data),
                "file_path": f"v{self._links - 1 if self.stale_links else self._links}/{found.path}",
            }
            return web.json_response({"ok": True, "result": result})
        if name == "answercallbackquery":
            if not params.get("callback_query_id"):
                return _error(400, "Bad Request: query is too old and response timeout expired or query ID is invalid")
            return web.json_response({"ok": True, "result": True})
        if name == "sendchataction":
            return self._chat_action(params)
        if name in SEND_METHODS:
            return self._send(token, name, params, files)
        return _error(404, "Not Found: method not found")

    def _chat_action(self, params: dict[str, Any]) -> web.Response:
        """``sendChatAction``: True, or the errors a send to that chat would get (blocked, not found)."""
        chat_id = str(params.get("chat_id", ""))
        if not chat_id:
            return _error(400, "Bad Request: chat_id is empty")
        if str(params.get("action", "")) not in CHAT_ACTIONS:
            return _error(400, "Bad Request: wrong parameter action in request")
        rule = self._rules.get(chat_id)
        if rule is not None and rule.status in (400, 403):
            return _error(rule.status, rule.description)
        self.chat_actions.append((chat_id, str(params["action"])))
        return web.json_response({"ok": True, "result": True})

    def _send(self, token: str, name: str, params: dict[str, Any], files: dict[str, UploadedFile]) -> web.Response:
        chat_id = str(params.get("chat_id", ""))
        if not chat_id:
            return _error(400, "Bad Request: chat_id is empty")
        rule = self._rules.get(chat_id)
        if rule is not None:
            if rule.times > 0:
                rule.times -= 1
                if rule.times == 0:
                    del self._rules[chat_id]
            if rule.status == 429:
                return _error(429, rule.description, retry_after=rule.retry_after)
            return _error(rule.status, rule.description)
        field_name = SEND_METHODS[name]
        chat_type = "private" if not chat_id.startswith("-") else "supergroup"
        message: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else 0, "type": chat_type},
            "from": self._bot_user(token),
        }
        if name == "sendmessage":
            text = str(params.get("text", ""))
            if not text.strip():
                return _error(400, "Bad Request: message text is empty")
            if _utf16(text) > 4096:
                return _error(400, "Bad Request: message is too long")
            message["text"] = text
        elif name == "sendlocation":
            message["location"] = {"latitude": float(params["latitude"]), "longitude": float(params["longitude"])}
        elif name == "sendcontact":
            message["contact"] = {"phone_number": params["phone_number"], "first_name": params["first_name"]}
        else:
            upload = files.get(field_name)
            ref = params.get(field_name)
            if upload is None and not ref:
                return _error(400, f"Bad Request: there is no {field_name} in the request")
            if upload is not None and name == "sendphoto":
                refused = _photo_problem(upload.data)
                if refused:
                    return _error(400, f"Bad Request: {refused}")
            file_id = str(ref) if ref else f"FILE{next(self._file_ids)}"
            meta = {"file_id": file_id, "file_unique_id": f"U{file_id}"}
            if upload is not None:
                meta["file_size"] = len(upload.data)
                folder = {"sendphoto": "photos", "sendvoice": "voice", "sendaudio": "music", "sendvideo": "videos"}
                self.add_file(file_id, upload.data, folder=folder.get(name, "documents"))
            if name == "sendphoto":
                message["photo"] = [{**meta, "width": 90, "height": 90}]
            elif name == "sendsticker":
                message["sticker"] = {
                    **meta,
                    "type": "regular",
                    "width": 512,
                    "height": 512,
                    "is_animated": False,
                    "is_video": False,
                }
            elif name in ("sendvideo",):
                message["video"] = {**meta, "width": 640, "height": 480, "duration": 1}
            elif name in ("sendvoice", "sendaudio"):
                message[field_name] = {**meta, "duration": 1}
            else:
                if upload is not None:
                    meta["file_name"] = upload.filename
                message["document"] = meta
        return web.json_response({"ok": True, "result": message})


def _photo_problem(data: bytes) -> str:
    """What the Bot API says of an upload it will not take as a photo ("" when it takes it)."""
    if len(data) > MAX_PHOTO:
        return "PHOTO_SAVE_FILE_INVALID"
    if not data.startswith(IMAGE_MAGIC):
        return "IMAGE_PROCESS_FAILED"
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        if width + height > 10000 or max(width, height) > 20 * max(1, min(width, height)):
            return "PHOTO_INVALID_DIMENSIONS"
    return ""


# -- building updates ------------------------------------------------------


def user(user_id: int, first_name: str = "Ivan", **more: Any) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, **more}


def message_update(
    update_id: int, chat_id: int, text: str | None = "hello", *, message_id: int = 1, **more: Any
) -> dict[str, Any]:
    """A private-chat ``message`` update from user ``chat_id``; ``more`` adds message fields."""
    sender = more.pop("from_user", user(chat_id))
    msg: dict[str, Any] = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": sender.get("first_name", "")},
        "from": sender,
        **more,
    }
    if text is not None:
        msg["text"] = text
    return {"update_id": update_id, "message": msg}
