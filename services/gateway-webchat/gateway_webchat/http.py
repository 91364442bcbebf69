"""The edge: ``/ws/{account}`` (visitor protocol), ``/files/...`` (files.py), ``/widget.js`` and ``/demo``.

A visitor frame is handled top to bottom: parse -> normalise -> publish with
``Nats-Msg-Id`` -> answer ``ack`` only after JetStream acknowledged it.

Overload: a replica holds at most ``OPENLINES_MAX_SOCKETS`` sockets (more
handshakes get HTTP 503 with ``Retry-After``) and publishes at most
``OPENLINES_MAX_IN_FLIGHT`` messages at once (``OPENLINES_MAX_WAITING`` more
wait a moment); a message beyond that is answered with an ``error`` frame
``{"code": "unavailable", "retry_after": N}`` and not published: the widget
sends it again, with the same id, after N seconds.

Abuse limits (docs/channels/webchat.md, "Abuse limits"): only widget accounts
a line is bound to are served; a socket authenticates with its first frame
(``hello``, never a token in the URL); visitor tokens expire and are renewed on
every connection; each visitor may send so many messages a minute and each
client address may start so many new visits a minute. A refusal stores
nothing and says why (``rate_limited`` frames carry ``retry_after``).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import msgspec
import nats.errors
from aiohttp import WSMsgType, web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gateway_webchat import metrics, token
from gateway_webchat.availability import Availability
from gateway_webchat.core import address, limits
from gateway_webchat.files import BadLink, Links, VisitorFiles, owns
from gateway_webchat.lines import BoundAccounts
from gateway_webchat.normalise import CHANNEL, ClientMessage, FrameError, browser_of, language_of, parse_frame, to_inbound
from gateway_webchat.push import Hub, Socket, frame, replay
from gateway_webchat.settings import Settings
from openlines import admission, bus, files, marks, subjects
from openlines.edge import BadUpload, Edge, TooLarge, read_file_part
from openlines.envelopes import Attachment, utcnow
from openlines.runner import json_error

MAX_READ_IDS = 50  # reply ids one read frame may name
TYPING_EVERY = 2.0  # seconds: a typing visitor is passed on at most this often

log = logging.getLogger("gateway_webchat.http")

WS_MAX_MSG = 1024 * 1024  # aiohttp's own limit; max_frame is enforced per frame with a clear error
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_LATER = 1013
CLOSE_BAD_REQUEST = 4400  # no hello first, or a token in the URL
CLOSE_BAD_TOKEN = 4401
CLOSE_BAD_ACCOUNT = 4404
CLOSE_AUTH_TIMEOUT = 4408
CLOSE_RATE_LIMITED = 4429  # too many new visitors from this address: come back after retry_after
MAX_AUTH_FRAMES = 2  # a hello, and a renew after it was told its token expired
_RENEW = object()  # "told the token expired: read the renew frame"
STATIC = Path(str(resources.files("gateway_webchat") / "static"))
WIDGET_CACHE = "public, max-age=300"  # short: a fixed widget reaches every site within minutes


_PUBLISHED_NEW = metrics.MESSAGES_PUBLISHED.labels("false")  # resolved once: the hot path counts every message
_PUBLISHED_DUPLICATE = metrics.MESSAGES_PUBLISHED.labels("true")


# The upload answers: the widget calls from the customer's site, with its token (never cookies).
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
}


class UploadError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def _not_sent(client_id: str) -> str:
    return frame(type="error", id=client_id, code="unavailable", detail="message not sent, please retry")


class WebchatHttp:
    def __init__(
        self,
        settings: Settings,
        nc: NATS,
        js: JetStreamContext,
        hub: Hub,
        bound: BoundAccounts,
        links: Links,
        availability: Availability,
    ) -> None:
        self.availability = availability
        self.settings = settings
        self.nc = nc
        self.js = js
        self.hub = hub
        self.bound = bound
        self.allowed = settings.allowed_accounts()
        self.proxies = settings.proxies()
        # Per replica, in memory (docs/channels/webchat.md, "Abuse limits", says why).
        self.message_limit = limits.Buckets(settings.message_rate())
        self.new_visitor_limit = limits.Buckets(settings.new_visitor_rate())
        self.upload_limit = limits.Buckets(settings.upload_rate())
        self.links = links
        self.files = VisitorFiles(js, max_age=settings.files_max_age_days * 86400, replicas=settings.replicas)
        self.upload_types = settings.upload_types()
        # Refused handshakes count by code; publishes in flight are let finish on a stop.
        self.edge = Edge(CHANNEL, lambda _status, code: metrics.REFUSED_SOCKETS.labels(code).inc())
        self.admission = admission.Admission("webchat", settings.limits())
        self._sockets = 0  # handshakes under way + open sockets
        self._unauthenticated: set[web.WebSocketResponse] = set()  # sockets waiting for their hello
        self._demo = (STATIC / "demo.html").read_text(encoding="utf-8")

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/ws/{account}", self.websocket)
        app.router.add_post("/files/{account}", self.upload)
        app.router.add_route("OPTIONS", "/files/{account}", self.upload_preflight)
        app.router.add_get("/files/{claim}/{signature}/{name}", self.download)
        app.router.add_get("/widget.js", self.widget)
        app.router.add_get("/demo", self.demo)

    # -- static -----------------------------------------------------------

    async def widget(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC / "widget.js",
            headers={
                "Content-Type": "application/javascript; charset=utf-8",
                "Cache-Control": WIDGET_CACHE,
                "X-Content-Type-Options": "nosniff",
                "Access-Control-Allow-Origin": "*",
            },
        )

    async def demo(self, request: web.Request) -> web.Response:
        base = self.settings.widget_public_url.rstrip("/")
        src = f"{base}/widget.js" if base else "/widget.js"
        account = request.query.get("account", self.settings.demo_account)
        body = self._demo.replace("{{WIDGET_SRC}}", html.escape(src)).replace("{{ACCOUNT}}", html.escape(account))
        return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-cache"})

    # -- the visitor socket ------------------------------------------------

    def _account_ok(self, account: str) -> bool:
        try:
            subjects.token(account, "account")
        except subjects.BadToken:
            return False
        return not self.allowed or account in self.allowed

    def client_key(self, request: web.Request) -> str:
        """The client address (IPv6: its /64) new visits are counted against."""
        return address.client_key(request.remote, request.headers.get(self.settings.client_ip_header), self.proxies)

    async def _refuse(self, ws: web.WebSocketResponse, code: str, detail: str, close_code: int) -> web.WebSocketResponse:
        # Browsers cannot read the HTTP status of a failed handshake: accept,
        # say why in a frame, and close with a code the widget acts on.
        metrics.REFUSED_SOCKETS.labels(code).inc()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(frame(type="error", code=code, detail=detail))
            await ws.close(code=close_code, message=f"{code}: {detail}".encode()[:120])
        return ws

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self._sockets >= self.settings.max_sockets:
            # Refused before the upgrade: nothing is allocated for it. A browser
            # sees a failed connection and the widget reconnects with backoff.
            return self.edge.overloaded(self.admission.refuse("sockets"), "too many open chats on this server")
        # One coroutine frame per open socket (this one): it is what an idle socket costs.
        self._sockets += 1
        sock: Socket | None = None
        try:
            ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG, heartbeat=self.settings.ws_heartbeat, autoping=True)
            await ws.prepare(request)
            admitted = await self._admit(ws, request)
            if admitted is None:
                return ws
            sock, welcome = admitted
            self.hub.add(sock)
            await sock.write(welcome)
            try:
                await replay(self.js, sock, self.links, self.hub)
            except Exception as exc:  # NATS down or slow: the widget reconnects with backoff
                log.warning("replay failed", extra={"channel": CHANNEL, "account": sock.account, "error": repr(exc)})
                sock.send(frame(type="error", code="unavailable", detail="history not available, reconnecting"))
                sock.close(CLOSE_TRY_LATER, "try again later")
                return ws
            if place := self.hub.place(sock.chat):
                sock.send(frame(type="queue", place=place))  # still waiting: where, as last told
            await self._read(sock)
            return ws
        finally:
            self._sockets -= 1
            if sock is not None:
                self.hub.remove(sock)
                sock.close(1000, "bye")
                await sock.drained(self.settings.shutdown_timeout)

    async def _admit(self, ws: web.WebSocketResponse, request: web.Request) -> tuple[Socket, str] | None:
        """Check the account and the hello frame: the visitor's socket and its welcome frame, or None when refused."""
        account = request.match_info["account"]
        if self.edge.stopping:
            await self._refuse(ws, "going_away", "server restarting, reconnect", CLOSE_GOING_AWAY)
            return None
        if "token" in request.query:
            # URLs end up in proxy and server logs: a token there is a token given away.
            detail = 'a visitor token is not accepted in the URL; send it in the first frame: {"type":"hello","token":...}'
            await self._refuse(ws, "token_in_url", detail, CLOSE_BAD_REQUEST)
            return None
        if not self._account_ok(account):
            await self._refuse(ws, "bad_account", "unknown widget account", CLOSE_BAD_ACCOUNT)
            return None
        if not self.bound.loaded.is_set():
            await self._refuse(ws, "unavailable", "starting up, reconnect shortly", CLOSE_TRY_LATER)
            return None
        if account not in self.bound:
            await self._refuse(ws, "bad_account", "no line uses this widget account", CLOSE_BAD_ACCOUNT)
            return None
        deadline = time.monotonic() + self.settings.hello_timeout
        self._unauthenticated.add(ws)
        try:
            for attempt in range(1, MAX_AUTH_FRAMES + 1):
                hello = await self._auth_frame(ws, deadline)
                if hello is None:
                    return None
                if self.edge.stopping:
                    await self._refuse(ws, "going_away", "server restarting, reconnect", CLOSE_GOING_AWAY)
                    return None
                admitted = await self._authenticate(ws, request, account, hello, last=attempt == MAX_AUTH_FRAMES)
                if admitted is not _RENEW:
                    return admitted  # type: ignore[return-value]
            return None
        finally:
            self._unauthenticated.discard(ws)

    async def _auth_frame(self, ws: web.WebSocketResponse, deadline: float) -> dict[str, object] | None:
        """The next frame before authentication, if it is a hello or renew; else refuse and None."""
        try:
            msg = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            await self._refuse(ws, "auth_timeout", "no hello frame in time", CLOSE_AUTH_TIMEOUT)
            return None
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                await self._refuse(ws, "auth_required", 'the first frame must be {"type":"hello"}', CLOSE_BAD_REQUEST)
            return None
        try:
            obj = msgspec.json.decode(msg.data) if len(msg.data) <= self.settings.max_frame else None
        except msgspec.DecodeError:
            obj = None
        if not isinstance(obj, dict) or obj.get("type") not in ("hello", "renew"):
            await self._refuse(ws, "auth_required", 'the first frame must be {"type":"hello"[,"token":...]}', CLOSE_BAD_REQUEST)
            return None
        raw = obj.get("token", "")
        if raw is not None and not isinstance(raw, str):
            await self._refuse(ws, "bad_token", '"token" must be a string', CLOSE_BAD_TOKEN)
            return None
        return obj

    async def _authenticate(
        self, ws: web.WebSocketResponse, request: web.Request, account: str, hello: dict[str, object], *, last: bool
    ) -> tuple[Socket, str] | object | None:
        """A hello or renew frame: the socket and welcome; None when refused (and closed); ``_RENEW`` to read a renew."""
        raw = str(hello.get("token") or "")
        renew = hello.get("type") == "renew"
        now = time.time()
        secret = self.settings.webchat_secret
        if not raw:
            if renew:
                await self._refuse(ws, "bad_token", "renew needs the expired token", CLOSE_BAD_TOKEN)
                return None
            verdict = self.new_visitor_limit.take(f"{account}|{self.client_key(request)}", time.monotonic())
            if not verdict.allowed:
                metrics.RATE_LIMITED.labels("new_visitor").inc()
                log.info("new visitor refused: rate limit", extra={"channel": CHANNEL, "account": account})
                metrics.REFUSED_SOCKETS.labels("rate_limited").inc()
                with contextlib.suppress(ConnectionError, RuntimeError):
                    detail = "too many new chats from your address; try again later"
                    await ws.send_str(frame(type="error", code="rate_limited", detail=detail, retry_after=verdict.retry_after))
                    await ws.close(code=CLOSE_RATE_LIMITED, message=b"rate_limited: too many new chats from your address")
                return None
            issued, visitor = token.issue(secret, account, now)
            new = True
        else:
            try:
                visitor = token.verify(
                    secret, raw, account, now=now, ttl=self.settings.visitor_ttl, grace=self.settings.visitor_grace
                )
            except token.TokenExpired as exc:
                if not renew and last:
                    await self._refuse(ws, "bad_token", "visitor token expired; renew it with a renew frame", CLOSE_BAD_TOKEN)
                    return None
                if not renew:
                    metrics.REJECTED_FRAMES.labels("token_expired").inc()
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await ws.send_str(frame(type="error", code="token_expired", detail=str(exc), renewable=True))
                    return _RENEW  # the widget answers with {"type":"renew","token":<the expired one>}
                visitor = exc.token
                log.info("expired visitor token renewed", extra={"channel": CHANNEL, "account": account})
            except token.TokenError as exc:
                log.info("visitor token refused", extra={"channel": CHANNEL, "account": account, "reason": str(exc)})
                await self._refuse(ws, "bad_token", f"{exc}; start a new visit without a token", CLOSE_BAD_TOKEN)
                return None
            # Every connection renews the token: a visitor who comes back within the validity never sees it expire.
            issued, visitor = token.issue(secret, account, now, visitor.visitor)
            new = False
        since = hello.get("since", 0)
        sock = Socket(
            ws,
            account,
            visitor.visitor,
            since=since if isinstance(since, int) and not isinstance(since, bool) and 0 <= since < 2**63 else 0,
            max_queue=self.settings.send_queue,
            browser=browser_of(request.headers.get("User-Agent", "")),
            language=language_of(request.headers.get("Accept-Language", "")),
        )
        welcome = frame(
            type="welcome",
            token=issued,
            visitor=visitor.visitor,
            new=new,
            max_text=self.settings.max_text,
            max_upload=self.settings.webchat_upload_max_bytes,
            expires_at=visitor.issued_at + self.settings.visitor_ttl,
            **self.availability.state(account).fields(),
        )
        return sock, welcome

    async def _read(self, sock: Socket) -> None:
        async for msg in sock.ws:
            if msg.type == WSMsgType.TEXT:
                await self._on_text(sock, msg.data)
            elif msg.type == WSMsgType.BINARY:
                metrics.REJECTED_FRAMES.labels("bad_frame").inc()
                await sock.write(frame(type="error", code="bad_frame", detail="binary frames are not supported; send JSON text"))
            elif msg.type == WSMsgType.ERROR:
                log.info("visitor socket error", extra={"channel": CHANNEL, "error": repr(sock.ws.exception())})
                return

    async def _on_text(self, sock: Socket, data: str) -> None:
        if len(data) <= 64 and '"typing"' in data and await self._typing(sock, data):
            return
        if len(data) <= 4096 and '"read"' in data and await self._read_mark(sock, data):
            return
        try:
            msg = parse_frame(data, max_text=self.settings.max_text, max_frame=self.settings.max_frame)
        except FrameError as exc:
            metrics.REJECTED_FRAMES.labels(exc.code).inc()
            err: dict[str, str] = {"type": "error", "code": exc.code, "detail": exc.detail}
            if exc.client_id:
                err["id"] = exc.client_id
            await sock.write(frame(**err))
            return
        if sock.account not in self.bound:
            # The line was unbound while this socket was open: nothing more is taken for it.
            metrics.REJECTED_FRAMES.labels("bad_account").inc()
            detail = "no line uses this widget account any more"
            sock.send(frame(type="error", id=msg.id, code="bad_account", detail=detail))
            sock.close(CLOSE_BAD_ACCOUNT, f"bad_account: {detail}")
            return
        verdict = self.message_limit.take(sock.chat, time.monotonic())
        if not verdict.allowed:
            # Not published: the widget shows it and sends the same id again after retry_after seconds.
            metrics.RATE_LIMITED.labels("messages").inc()
            detail = "you are sending messages too fast; sending again shortly"
            await sock.write(frame(type="error", id=msg.id, code="rate_limited", detail=detail, retry_after=verdict.retry_after))
            return
        try:
            await self.admission.acquire()
        except admission.Overloaded as exc:
            # Nothing published: the widget sends the same id again after retry_after seconds.
            detail = "server busy, sending again shortly"
            await sock.write(frame(type="error", id=msg.id, code="unavailable", detail=detail, retry_after=exc.retry_after))
            return
        try:
            with self.edge.working():
                answer = await self._publish(sock, msg)
        finally:
            self.admission.release()
        await sock.write(answer)

    async def _typing(self, sock: Socket, data: str) -> bool:
        """``{"type":"typing"}``: the visitor is typing; passed to the desk at most every TYPING_EVERY seconds.

        Core NATS, fire and forget: nothing is stored and nothing is answered; a
        lost one only means the operator does not see "typing..." this time.
        """
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return False
        if not isinstance(obj, dict) or obj.get("type") != "typing":
            return False
        now = time.monotonic()
        if now - sock.typing_at >= TYPING_EVERY and sock.account in self.bound and self.nc.is_connected:
            sock.typing_at = now
            with contextlib.suppress(Exception):
                await self.nc.publish(subjects.typing_in(CHANNEL, sock.account, sock.chat), b"{}")
        return True

    async def _read_mark(self, sock: Socket, data: str) -> bool:
        """``{"type":"read","ids":[...]}``: the visitor saw these replies; a read mark under each, for the operator.

        Only replies this replica showed to this very chat count; anything else is ignored.
        """
        try:
            obj = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return False
        if not isinstance(obj, dict) or obj.get("type") != "read":
            return False
        ids = obj.get("ids")
        if not isinstance(ids, list):
            return True
        now = utcnow()
        for out_id in ids[:MAX_READ_IDS]:
            session_id = self.hub.reply_session(sock.chat, out_id) if isinstance(out_id, str) else ""
            if not session_id:
                continue
            with contextlib.suppress(Exception):  # a lost read mark is only a mark: never the socket
                await marks.publish_mark(
                    self.js,
                    channel=CHANNEL,
                    session_id=session_id,
                    message_id=out_id,
                    status="read",
                    at=now,
                    account=sock.account,
                    timeout=self.settings.publish_timeout,
                )
        return True

    async def _publish(self, sock: Socket, msg: ClientMessage) -> str:
        """The frame answering ``msg``: ``ack`` only once JetStream holds it."""
        if self.edge.stopping:
            metrics.PUBLISH_FAILURES.labels("stopping").inc()
            return _not_sent(msg.id)
        attachments: list[Attachment] = []
        for file_id in msg.files:
            try:
                att = await self.files.attachment(sock.account, sock.visitor, file_id)
            except (files.StoreUnavailable, nats.errors.Error):
                metrics.PUBLISH_FAILURES.labels("files").inc()
                return _not_sent(msg.id)
            if att is None:
                detail = "a file of this message is not (or no longer) uploaded; attach it again"
                return frame(type="error", id=msg.id, code="bad_file", detail=detail)
            attachments.append(att)
        inbound = to_inbound(sock.account, sock.visitor, msg, utcnow(), attachments, browser=sock.browser, language=sock.language)
        try:
            ack = await bus.publish_inbound(self.nc, self.js, inbound, timeout=self.settings.publish_timeout)
        except bus.BusUnavailable as exc:  # the visitor sees "not sent" at once and may retry
            metrics.PUBLISH_FAILURES.labels(exc.reason).inc()
            if exc.error is not None:
                log.warning(
                    "publish failed",
                    extra={"channel": CHANNEL, "account": sock.account, "msg_id": inbound.id, "error": repr(exc.error)},
                )
            return _not_sent(msg.id)
        duplicate = bool(ack.duplicate)
        (_PUBLISHED_DUPLICATE if duplicate else _PUBLISHED_NEW).inc()
        log.debug(  # hot path: the published counter counts these
            "message published",
            extra={"channel": CHANNEL, "account": sock.account, "msg_id": inbound.id, "seq": ack.seq, "duplicate": duplicate},
        )
        return frame(type="ack", id=msg.id, status="sent", duplicate=duplicate)

    # -- files ------------------------------------------------------------

    async def upload_preflight(self, request: web.Request) -> web.StreamResponse:
        """CORS: the widget runs on the customer's site and uploads to this gateway with its token (no cookies)."""
        return web.Response(status=204, headers={**CORS, "Access-Control-Max-Age": "600"})

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """One file from a visitor (multipart field ``file``); answers its id for the next message frame."""
        account = request.match_info["account"]
        try:
            visitor = self._visitor(request, account)
            limit = self.settings.webchat_upload_max_bytes
            if request.content_length is not None and request.content_length > limit + 64 * 1024:
                raise UploadError(413, "too_large", f"the file is larger than {limit} bytes")
            verdict = self.upload_limit.take(f"{account}|{visitor}", time.monotonic())
            if not verdict.allowed:
                metrics.RATE_LIMITED.labels("uploads").inc()
                raise UploadError(
                    429, "rate_limited", "too many files; try again shortly", {"Retry-After": str(verdict.retry_after)}
                )
            try:
                async with self.admission.slot():
                    name, mime, data = await self._read_file(request, limit)
                    self._check(mime, data)
                    stored = await self.files.put(account, visitor, name, mime, data)
            except admission.Overloaded as exc:
                raise UploadError(503, "unavailable", "server busy; try again", {"Retry-After": str(exc.retry_after)}) from None
            except (TimeoutError, nats.errors.Error):
                raise UploadError(503, "unavailable", "the file could not be stored; try again") from None
        except UploadError as exc:
            metrics.UPLOADS.labels(exc.code).inc()
            return json_error(exc.status, exc.code, exc.detail, {**CORS, **exc.headers})
        metrics.UPLOADS.labels("stored").inc()
        mine = Attachment(kind=stored.kind, name=stored.name, ref=self.files.reader_ref(account, visitor, stored.file_id))
        body = {
            "ok": True,
            "file": {
                "id": stored.file_id,
                "name": stored.name,
                "mime": stored.mime,
                "size": stored.size,
                "kind": stored.kind,
                "url": self.links.path(account, visitor, mine, time.time()),
            },
        }
        return web.json_response(body, headers=CORS)

    def _visitor(self, request: web.Request, account: str) -> str:
        if not self._account_ok(account) or account not in self.bound:
            raise UploadError(404, "bad_account", "no line uses this widget account")
        scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise UploadError(401, "bad_token", "send the visitor token as Authorization: Bearer <token>")
        try:
            visitor = token.verify(
                self.settings.webchat_secret,
                raw.strip(),
                account,
                now=time.time(),
                ttl=self.settings.visitor_ttl,
                grace=self.settings.visitor_grace,  # an expired token uploads nothing: it is told to reconnect
            )
        except token.TokenError as exc:
            code = "token_expired" if isinstance(exc, token.TokenExpired) else "bad_token"
            raise UploadError(401, code, f"{exc}; reconnect for a fresh token") from None
        return visitor.visitor

    async def _read_file(self, request: web.Request, limit: int) -> tuple[str, str, bytes]:
        if not request.content_type.startswith("multipart/form-data"):
            raise UploadError(400, "bad_request", "send the file as multipart/form-data in a field named file")
        try:
            return await read_file_part(request, limit)
        except TooLarge:
            raise UploadError(413, "too_large", f"the file is larger than {limit} bytes") from None
        except BadUpload as exc:
            raise UploadError(400, "bad_request", str(exc)) from None

    def _check(self, mime: str, data: bytes) -> None:
        if not data:
            raise UploadError(400, "bad_request", "the file is empty")
        if mime not in self.upload_types:
            allowed = ", ".join(sorted(self.upload_types))
            raise UploadError(415, "unsupported", f"files of type {mime or 'unknown'!r} cannot be sent; allowed: {allowed}")
        if mime.startswith("image/") and not files.image_matches(mime, data[:16]):
            raise UploadError(415, "unsupported", f"the file says it is {mime} but its content is not")

    async def download(self, request: web.Request) -> web.StreamResponse:
        """A file at a link we signed for one visitor: theirs, or an operator's file sent to them."""
        try:
            claim = self.links.verify(request.match_info["claim"], request.match_info["signature"], time.time())
        except BadLink as exc:
            return json_error(403, "bad_link", str(exc))
        if not owns(claim):
            return json_error(403, "bad_link", "not a link of this server")
        try:
            stored = await self.files.reader.get(claim.ref)
        except files.FileGone:
            return json_error(404, "not_found", "the file is no longer kept")
        except files.StoreUnavailable:
            return json_error(503, "unavailable", "try again shortly", admission.retry_after_header(self.settings.retry_after))
        mime = stored.meta.mime or "application/octet-stream"
        shown = files.shown_as(mime, stored.data[:16])
        content_type = (
            (files.sniff_image(stored.data[:16]) or mime) if shown == "image" else mime if shown else "application/octet-stream"
        )
        name = quote(files.clean_name(stored.meta.name or request.match_info["name"]), safe="")
        return web.Response(
            body=stored.data,
            headers={
                "Content-Type": content_type,
                "Content-Disposition": f"{'inline' if shown else 'attachment'}; filename*=UTF-8''{name}",
                "Cache-Control": "private, max-age=3600",
                "Content-Security-Policy": "sandbox; default-src 'none'",
                "X-Content-Type-Options": "nosniff",
                "Cross-Origin-Resource-Policy": "cross-origin",  # shown in the widget on the customer's site
                "Referrer-Policy": "no-referrer",
            },
        )

    # -- stopping ---------------------------------------------------------

    async def shutdown(self) -> None:
        """Let in-flight publishes answer, then close every socket with 1001 so widgets reconnect elsewhere."""
        await self.edge.drain(self.settings.publish_timeout + 1)
        for waiting in list(self._unauthenticated):  # still before their hello: nothing to finish
            with contextlib.suppress(ConnectionError, RuntimeError):
                await waiting.close(code=CLOSE_GOING_AWAY, message=b"going away")
        sockets = self.hub.sockets()
        for sock in sockets:
            sock.close(CLOSE_GOING_AWAY, "going away")
        if sockets:
            await asyncio.gather(*(s.drained(self.settings.shutdown_timeout) for s in sockets))
