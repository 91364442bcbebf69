"""A local WhatsApp Business Cloud API (Graph API) for tests, following the documented protocol.

The API side (``FakeWhatsApp.base`` stands for ``https://graph.facebook.com``):

- ``POST /{version}/{phone-number-id}/messages`` with ``Authorization: Bearer
  <token>`` and a JSON body (``messaging_product: whatsapp``, ``to``, ``type``
  and the object of that type). Answers ``{"messaging_product", "contacts":
  [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]}``.
- ``POST /{version}/{phone-number-id}/media`` (multipart: ``file``, ``type``,
  ``messaging_product``) -> ``{"id": "<media id>"}``, with WhatsApp's size limits.
- ``GET /{version}/{media-id}`` -> ``{"messaging_product", "url", "mime_type",
  "sha256", "file_size", "id"}``; the URL (``/whatsapp_business/attachments/?mid=``)
  opens only with the bearer token, like lookaside.fbsbx.com.
- ``GET /{version}/{phone-number-id}`` -> the number's profile.
- Errors as the Graph API gives them: HTTP 4xx/5xx with ``{"error": {"message":
  "(#<code>) <title>", "type", "code", "error_data": {"messaging_product",
  "details"}, "error_subcode", "fbtrace_id"}}``: 190 for a wrong or expired token,
  100 for a bad parameter, 130429 throughput, 131056 pair rate, 131026
  undeliverable, 131047 re-engagement (the 24-hour window), 132000/132001 for
  templates, 131053 for a media upload, 1/2/131000 transient - on demand.

The webhook side: :meth:`FakeWhatsApp.verify_webhook` makes the verification
handshake (``hub.mode``, ``hub.verify_token``, ``hub.challenge``),
:meth:`FakeWhatsApp.deliver` POSTs a notification signed with
``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body with the app secret) and
resends it until it is answered 200, as Meta does. Every accepted message gets
``sent`` and ``delivered`` status callbacks (with the ``biz_opaque_callback_data``
it was sent with); a free-form message to a client whose last message is more
than 24 hours old is accepted and then fails with a ``failed`` status carrying
131047, as the Cloud API reports it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

VERSION = "v23.0"
SIGNATURE_HEADER = "X-Hub-Signature-256"
WINDOW = 24 * 3600.0
MB = 1024 * 1024
UPLOAD_LIMITS = {"image": 5 * MB, "video": 16 * MB, "audio": 16 * MB, "sticker": 500 * 1024, "document": 100 * MB}
UPLOAD_TYPES = {
    "image/jpeg": "image",
    "image/png": "image",
    "image/webp": "sticker",
    "video/mp4": "video",
    "video/3gpp": "video",
    "audio/aac": "audio",
    "audio/amr": "audio",
    "audio/mpeg": "audio",
    "audio/mp4": "audio",
    "audio/ogg": "audio",
}
# code -> (title, details, HTTP status) as the Cloud API's error reference lists them
ERRORS: dict[int, tuple[str, str, int]] = {
    1: ("API Unknown", "Invalid request or possible server error.", 400),
    2: ("API Service", "Temporary due to downtime or due to being overloaded.", 503),
    4: ("API Too Many Calls", "The app has reached its API call rate limit.", 429),
    100: ("Invalid parameter", "The request included one or more unsupported or misspelled parameters.", 400),
    190: ("Access token has expired", "Error validating access token: Session has expired.", 401),
    80007: ("Rate limit issues", "The WhatsApp Business Account has reached its rate limit.", 400),
    130429: (
        "Rate limit hit",
        "Message failed to send because there were too many messages sent from this phone number in a short period of time",
        400,
    ),
    131000: ("Something went wrong", "Message failed to send due to an unknown error.", 500),
    131026: ("Message Undeliverable", "Unable to deliver message.", 400),
    131047: (
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        400,
    ),
    131053: ("Media upload error", "Unable to upload the media used in the message.", 400),
    131056: (
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone number to the same phone number"
        " in a short period of time.",
        400,
    ),
    132000: ("Number of parameters does not match the expected number of params", "body: number of localizable_params", 400),
    132001: ("Template name does not exist in the translation", "template name does not exist in the language", 404),
}


def error_body(code: int, details: str = "") -> tuple[dict[str, Any], int]:
    title, default, status = ERRORS.get(code, ("Error", "", 400))
    err: dict[str, Any] = {
        "message": f"(#{code}) {title}",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or default},
        "fbtrace_id": "A" + secrets.token_urlsafe(16),
    }
    if code == 190:
        err["message"] = "Error validating access token: Session has expired."
        err.pop("error_data")
    return {"error": err}, status


def _error(code: int, details: str = "") -> web.Response:
    body, status = error_body(code, details)
    return web.json_response(body, status=status)


def new_wamid() -> str:
    return "wamid." + base64.b64encode(secrets.token_bytes(30)).decode()


@dataclass
class Number:
    phone_number_id: str
    token: str
    display: str


@dataclass
class SentMessage:
    phone_number_id: str
    to: str
    type: str
    payload: dict[str, Any]
    wamid: str
    at: float = field(default_factory=time.monotonic)

    @property
    def text(self) -> str:
        if self.type == "text":
            return str(self.payload.get("text", {}).get("body", ""))
        return ""

    @property
    def callback(self) -> str:
        return str(self.payload.get("biz_opaque_callback_data", ""))


@dataclass
class Media:
    media_id: str
    data: bytes
    mime: str
    filename: str
    phone_number_id: str
    token: str  # whose bearer opens its URL


@dataclass
class Rule:
    code: int
    times: int  # -1: until cleared
    asynchronous: bool = False  # accept, then report a failed status


@dataclass
class Template:
    name: str
    language: str
    params: int  # body variables


@dataclass
class Hook:
    url: str = ""
    app_secret: str = ""
    verify_token: str = ""


class FakeWhatsApp:
    def __init__(self) -> None:
        self.app = web.Application(client_max_size=120 * MB)
        self.app.router.add_post("/{version}/{phone_number_id}/messages", self._messages)
        self.app.router.add_post("/{version}/{phone_number_id}/media", self._upload)
        self.app.router.add_get("/whatsapp_business/attachments/", self._download)
        self.app.router.add_get("/{version}/{node}", self._node)
        self.numbers: dict[str, Number] = {}
        self.sent: list[SentMessage] = []
        self.media: dict[str, Media] = {}
        self.templates: dict[tuple[str, str], Template] = {}
        self.hook = Hook()
        self.last_client_message: dict[tuple[str, str], float] = {}  # (number id, wa_id) -> time.time()
        self.deliveries: list[tuple[int, dict[str, Any]]] = []  # (status answered, notification) of each POST made
        self.auto_status = True  # sent + delivered callbacks for every accepted message
        self.calls: list[tuple[str, str]] = []  # (method, path)
        self._rules: dict[str, Rule] = {}  # recipient (or "*") -> rule
        self._media_failures: list[int] = []  # error codes for the next media lookups
        self._media_ids = itertools.count(900_000_000_000_000)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
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
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def add_number(self, phone_number_id: str, token: str, display: str = "15550001111") -> None:
        self.numbers[phone_number_id] = Number(phone_number_id, token, display)

    def approve_template(self, name: str, language: str = "en_US", params: int = 0) -> None:
        self.templates[(name, language)] = Template(name, language, params)

    # -- test controls ----------------------------------------------------

    def fail(self, to: str, code: int, times: int = 1, *, asynchronous: bool = False) -> None:
        """The next ``times`` sends to ``to`` ("*" = anyone) fail with ``code`` (-1: until cleared);
        ``asynchronous``: accepted, then a ``failed`` status callback carries the error."""
        self._rules[to] = Rule(code, times, asynchronous)

    def clear(self, to: str) -> None:
        self._rules.pop(to, None)

    def fail_media(self, code: int, times: int = 1) -> None:
        """The next ``times`` media lookups (``GET /{media-id}``) answer error ``code``."""
        self._media_failures.extend([code] * times)

    def expire_token(self, phone_number_id: str) -> None:
        self.numbers[phone_number_id].token = "expired-" + secrets.token_hex(8)

    def age_window(self, phone_number_id: str, wa_id: str, hours: float) -> None:
        """The client's last message was ``hours`` ago."""
        self.last_client_message[(phone_number_id, wa_id)] = time.time() - hours * 3600

    def add_client_media(self, phone_number_id: str, data: bytes, mime: str, filename: str = "") -> str:
        """A file a client sends: kept by WhatsApp, fetched by the business with its token."""
        media_id = str(next(self._media_ids))
        number = self.numbers[phone_number_id]
        self.media[media_id] = Media(media_id, data, mime, filename, phone_number_id, number.token)
        return media_id

    def sent_to(self, to: str, type: str | None = None) -> list[SentMessage]:
        return [m for m in self.sent if m.to == to and (type is None or m.type == type)]

    # -- the API ------------------------------------------------------------

    def _auth(self, request: web.Request, number: Number | None) -> web.Response | None:
        given = request.headers.get("Authorization", "")
        if number is None or not hmac.compare_digest(given.encode(), f"Bearer {number.token}".encode()):
            return _error(190)
        return None

    async def _messages(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        number = self.numbers.get(request.match_info["phone_number_id"])
        refused = self._auth(request, number)
        if refused is not None:
            return refused
        assert number is not None
        try:
            body = await request.json()
        except ValueError:
            return _error(100, "the body is not JSON")
        if not isinstance(body, dict) or body.get("messaging_product") != "whatsapp":
            return _error(100, "(#100) The parameter messaging_product is required.")
        to, kind = str(body.get("to") or ""), str(body.get("type") or "text")
        if not to:
            return _error(100, "(#100) The parameter to is required.")
        problem = self._check(number, body, kind)
        if problem is not None:
            return problem
        rule = self._rules.get(to) or self._rules.get("*")
        failing: Rule | None = None
        if rule is not None:
            if rule.times > 0:
                rule.times -= 1
                if rule.times == 0:
                    self._rules.pop(to if to in self._rules else "*", None)
            if not rule.asynchronous:
                return _error(rule.code)
            failing = rule
        wamid = new_wamid()
        msg = SentMessage(number.phone_number_id, to, kind, body, wamid)
        self.sent.append(msg)
        last = self.last_client_message.get((number.phone_number_id, to))
        if failing is not None:
            self._later(self._statuses(msg, failed=failing.code))
        elif kind != "template" and (last is None or time.time() - last > WINDOW):
            self._later(self._statuses(msg, failed=131047))
        elif self.auto_status:
            self._later(self._statuses(msg))
        return web.json_response(
            {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [{"id": wamid}]}
        )

    def _check(self, number: Number, body: dict[str, Any], kind: str) -> web.Response | None:
        obj = body.get(kind)
        if not isinstance(obj, dict) and kind != "contacts":
            return _error(100, f"(#100) Param {kind} is required.")
        if kind == "text":
            text = str(obj.get("body", "")) if isinstance(obj, dict) else ""
            if not text.strip():
                return _error(100, "(#100) Param text['body'] is required.")
            if len(text) > 4096:
                return _error(100, "(#100) Param text['body'] must be at most 4096 characters long.")
        elif kind == "template":
            assert isinstance(obj, dict)
            name, lang = str(obj.get("name", "")), str((obj.get("language") or {}).get("code", ""))
            tpl = self.templates.get((name, lang))
            if tpl is None:
                return _error(132001, f"template name ({name}) does not exist in {lang}")
            params = [p for c in obj.get("components") or [] if c.get("type") == "body" for p in c.get("parameters") or []]
            if len(params) != tpl.params:
                return _error(
                    132000,
                    f"body: number of localizable_params ({len(params)}) does not match the expected number ({tpl.params})",
                )
            for p in params:
                text = str(p.get("text", ""))
                if not text.strip() or "\n" in text or "\t" in text or "     " in text:
                    return _error(
                        100, "(#132018) Param text cannot have new-line/tab characters or more than 4 consecutive spaces"
                    )
        elif kind in ("image", "video", "audio", "document", "sticker"):
            assert isinstance(obj, dict)
            media = self.media.get(str(obj.get("id", "")))
            if media is None or media.phone_number_id != number.phone_number_id:
                return _error(100, "(#100) Invalid parameter: media id")
        return None

    async def _upload(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        number = self.numbers.get(request.match_info["phone_number_id"])
        refused = self._auth(request, number)
        if refused is not None:
            return refused
        assert number is not None
        form = await request.post()
        file = form.get("file")
        if form.get("messaging_product") != "whatsapp" or not isinstance(file, web.FileField):
            return _error(100, "(#100) messaging_product and file are required")
        mime = str(form.get("type") or file.content_type)
        data = file.file.read()
        limit = UPLOAD_LIMITS.get(UPLOAD_TYPES.get(mime, "document"), UPLOAD_LIMITS["document"])
        if len(data) > limit:
            return _error(131053, f"{mime} file is {len(data)} bytes; the limit is {limit}")
        media_id = str(next(self._media_ids))
        self.media[media_id] = Media(media_id, data, mime, file.filename or "", number.phone_number_id, number.token)
        return web.json_response({"id": media_id})

    async def _node(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        node = request.match_info["node"]
        if node in self.numbers:
            number = self.numbers[node]
            refused = self._auth(request, number)
            if refused is not None:
                return refused
            return web.json_response(
                {"display_phone_number": number.display, "verified_name": "Test Shop", "quality_rating": "GREEN", "id": node}
            )
        if self._media_failures:
            return _error(self._media_failures.pop(0))
        media = self.media.get(node)
        if media is None:
            return _error(100, f"(#100) Unsupported get request. Object with ID '{node}' does not exist")
        refused = self._auth(request, self.numbers.get(media.phone_number_id))
        if refused is not None:
            return refused
        url = (
            f"{self.base}/whatsapp_business/attachments/?mid={media.media_id}&ext={int(time.time())}&hash={secrets.token_hex(8)}"
        )
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": url,
                "mime_type": media.mime,
                "sha256": hashlib.sha256(media.data).hexdigest(),
                "file_size": str(len(media.data)),
                "id": media.media_id,
            }
        )

    async def _download(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        media = self.media.get(request.query.get("mid", ""))
        if media is None:
            return web.Response(status=404, text="Not Found")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.numbers[media.phone_number_id].token}".encode()):
            return web.Response(status=401, text="Unauthorized")  # the URL alone opens nothing
        return web.Response(body=media.data, content_type=media.mime.split(";")[0])

    # -- the webhook ----------------------------------------------------------

    def configure(self, url: str, app_secret: str, verify_token: str) -> None:
        self.hook = Hook(url, app_secret, verify_token)

    def _http(self) -> aiohttp.ClientSession:
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession()
        return self._client

    async def verify_webhook(self, verify_token: str | None = None) -> tuple[int, str, str]:
        """The handshake Meta makes when the callback URL is saved: (status, body, the challenge sent)."""
        challenge = str(secrets.randbelow(10**9))
        token = self.hook.verify_token if verify_token is None else verify_token
        params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": challenge}
        async with self._http().get(self.hook.url, params=params) as resp:
            return resp.status, await resp.text(), challenge

    def sign(self, body: bytes, secret: str | None = None) -> str:
        key = (self.hook.app_secret if secret is None else secret).encode()
        return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()

    async def post(self, notification: dict[str, Any] | bytes, *, signature: str | None = None) -> tuple[int, Any]:
        """POST one notification as Meta does, once: (status, decoded body).

        ``signature`` None: signed with the app secret; "" : no signature header; else that header value.
        """
        body = notification if isinstance(notification, bytes) else json.dumps(notification).encode()
        headers = {"Content-Type": "application/json"}
        if signature is None:
            headers[SIGNATURE_HEADER] = self.sign(body)
        elif signature:
            headers[SIGNATURE_HEADER] = signature
        async with self._http().post(self.hook.url, data=body, headers=headers) as resp:
            text = await resp.text()
            status = resp.status
        if not isinstance(notification, bytes):
            self.deliveries.append((status, notification))
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    async def deliver(self, notification: dict[str, Any], *, attempts: int = 50, pause: float = 0.1) -> tuple[int, Any]:
        """POST until answered 200, as Meta retries a notification (with backoff, for days); the last answer."""
        status, body = 0, None
        for _ in range(attempts):
            try:
                status, body = await self.post(notification)
            except (aiohttp.ClientError, OSError):
                status, body = 0, None
            if status == 200:
                break
            await asyncio.sleep(pause)
        return status, body

    async def client_says(
        self, phone_number_id: str, wa_id: str, message: dict[str, Any], name: str = "Client"
    ) -> tuple[int, Any]:
        """A client's message as its notification, delivered until stored; the client's window opens."""
        self.last_client_message[(phone_number_id, wa_id)] = time.time()
        return await self.deliver(notification(phone_number_id, [message], contacts=[contact(wa_id, name)]))

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _statuses(self, msg: SentMessage, *, failed: int = 0) -> None:
        if not self.hook.url:
            return
        if failed:
            await self.deliver(notification(msg.phone_number_id, statuses=[status(msg, "failed", code=failed)]))
            return
        await self.deliver(notification(msg.phone_number_id, statuses=[status(msg, "sent")]))
        await self.deliver(notification(msg.phone_number_id, statuses=[status(msg, "delivered")]))

    async def read(self, msg: SentMessage) -> tuple[int, Any]:
        """The client opened the message: a ``read`` status."""
        return await self.deliver(notification(msg.phone_number_id, statuses=[status(msg, "read")]))

    async def idle(self) -> None:
        """Wait until every status callback in flight was delivered."""
        while self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self._tasks), return_exceptions=True)


# -- building notifications ------------------------------------------------------


def contact(wa_id: str, name: str = "Client") -> dict[str, Any]:
    return {"profile": {"name": name}, "wa_id": wa_id}


def message(wa_id: str, type: str = "text", *, wamid: str | None = None, ts: int | None = None, **body: Any) -> dict[str, Any]:
    """A client's message object; ``body`` is the object of its type (``text={"body": "hi"}`` by default)."""
    msg: dict[str, Any] = {"from": wa_id, "id": wamid or new_wamid(), "timestamp": str(ts or int(time.time())), "type": type}
    msg.update(body or ({"text": {"body": "hello"}} if type == "text" else {}))
    return msg


def text(wa_id: str, words: str, **kw: Any) -> dict[str, Any]:
    return message(wa_id, "text", text={"body": words}, **kw)


def notification(
    phone_number_id: str,
    messages: list[dict[str, Any]] | None = None,
    *,
    contacts: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    display: str = "15550001111",
    waba_id: str = "102290129340398",
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display, "phone_number_id": phone_number_id},
    }
    if contacts:
        value["contacts"] = contacts
    if messages:
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": [{"value": value, "field": "messages"}]}]}


def status(msg: SentMessage, state: str, *, code: int = 0) -> dict[str, Any]:
    st: dict[str, Any] = {"id": msg.wamid, "status": state, "timestamp": str(int(time.time())), "recipient_id": msg.to}
    if msg.callback:
        st["biz_opaque_callback_data"] = msg.callback
    if state in ("sent", "delivered"):
        st["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}
    if code:
        body, _ = error_body(code)
        err = body["error"]
        st["errors"] = [
            {
                "code": code,
                "title": err["message"].split(") ", 1)[-1],
                "message": err["message"].split(") ", 1)[-1],
                "error_data": {"details": err.get("error_data", {}).get("details", "")},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ]
    return st
