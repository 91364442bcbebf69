"""The HTTP edge of the desk: login, the workspace page, the JSON API, the WebSocket.

Every handler reads top to bottom: who is asking → is the request allowed →
parse → ask the router (commands) or read KV → answer. Errors leave as
``{"error", "detail"}`` JSON with the status the router's error code maps to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgspec
import nats.errors
from aiohttp import WSCloseCode, WSMsgType, web
from nats.aio.client import Client as NATS
from prometheus_client import Counter

from desk import views
from desk.auth import (
    ADMIN_HOME,
    ADMIN_ROLE,
    COOKIE_NAME,
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE_NAME,
    DeskSession,
    PasswordChecker,
    Signer,
    access_problem,
    landing,
    nav_links,
    same_origin,
)
from desk.crm import MAX_QUERY, CrmReader, parse_ref, record_ref
from desk.files import FileRefused, FileStore
from desk.guard import Limits, LoginLimiter, Revocations, open_guards
from desk.hosts import UNCHECKED_PATHS, HostPolicy
from desk.index import ConversationIndex
from desk.linelist import LineList
from desk.live import Connection, Hub
from desk.reads import (
    PREVIOUS_SCAN_EVENTS,
    PREVIOUS_SHOWN,
    Reader,
    client_addresses,
    client_record,
    holds_client,
    is_token,
    previous_sessions,
)
from desk.settings import Settings
from desk.supervise import overview, supervisor_problem
from openlines import bus, commands, edge, files, subjects
from openlines.apply import load_lines
from openlines.bus import kv_entries
from openlines.commands import (
    Accept,
    Close,
    CommandFailed,
    CommandName,
    Intercept,
    Note,
    Pin,
    Reply,
    Result,
    SetStatus,
    Skip,
    Spam,
    TemplateChoice,
    Transfer,
)
from openlines.envelopes import BAD_JSON, Attachment, HistoryEntry
from openlines.runner import json_error
from openlines.state import OperatorAccount, OperatorState, Session

log = logging.getLogger("desk.http")
SIGNED_IN_HOME = "/?signed_in=1"

MAX_TEXT = 4000
MAX_JSON_BODY = 64 * 1024
MAX_PASSWORD = 1024
STATUSES = ("online", "away", "offline")
LOGIN_FORM_TTL = 3600
MAX_FILES_PER_REPLY = 10

# The router's error codes and the HTTP status each one becomes.
RETRY_AFTER_SECONDS = 2  # a 503's Retry-After: the longest pause between the desk's own repeats of a command
HTTP_STATUS_OF = {"not_found": 404, "forbidden": 403, "invalid": 400, "conflict": 409, "window_closed": 409, "unavailable": 503}

LOGINS = Counter("openlines_desk_logins_total", "Desk sign-in attempts", ["result"])
COMMAND_REPEATS = Counter(
    "openlines_desk_command_repeats_total", "Operator commands asked of the router again after it did not answer", ["command"]
)
REPEATED_COMMANDS = Counter(
    "openlines_desk_repeated_commands_total",
    "Operator commands asked of the router more than once, by how they ended (ok, unavailable = 503, a refusal's code)",
    ["command", "result"],
)


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Authed:
    account: OperatorAccount
    session: DeskSession
    problem: str | None  # why the account may not use the desk, if it may not

    @property
    def operator_id(self) -> str:
        return self.account.id


class Desk:
    """Everything the handlers share, built once per service."""

    def __init__(self, settings: Settings, nc: NATS, reader: Reader, hub: Hub, index: ConversationIndex) -> None:
        self.settings = settings
        self.nc = nc
        self.reader = reader
        self.hub = hub
        self.index = index  # views and search (desk.index)
        self.lines = LineList(reader.js)
        self.crm = CrmReader(reader.js)
        self.signer = Signer(settings.cookie_secret)
        self.hosts = HostPolicy(settings.desk_public_url, settings.allowed_hosts)
        self.passwords = PasswordChecker()
        # The desk's own buckets, opened (or created) on first use.
        self._guards: tuple[LoginLimiter, Revocations] | None = None
        self._files: FileStore | None = None
        self._opening = asyncio.Lock()
        # Every file a transcript names, read by reference (clients' files from the gateways' stores, operators' from ours).
        self.file_reader = files.Reader(reader.js)

    async def guards(self) -> tuple[LoginLimiter, Revocations]:
        if self._guards is None:
            async with self._opening:
                if self._guards is None:
                    s = self.settings
                    limits = Limits(
                        s.login_window_seconds,
                        per_login=s.login_failures_per_login,
                        per_address=s.login_failures_per_address,
                        per_source=s.login_failures_per_source,
                        slow_seconds=s.login_slow_seconds,
                    )
                    self._guards = await open_guards(self.reader.js, limits, s.replicas)
        return self._guards

    async def files(self) -> FileStore:
        if self._files is None:
            async with self._opening:
                if self._files is None:
                    s = self.settings
                    self._files = await FileStore.open(self.reader.js, max_age=s.files_max_age_days * 86400, replicas=s.replicas)
        return self._files

    def client_address(self, request: web.Request) -> str:
        if self.settings.trust_forwarded_for:
            last = request.headers.get("X-Forwarded-For", "").rsplit(",", 1)[-1].strip()
            if last:
                return last
        return request.remote or "unknown"

    def public_base(self, request: web.Request) -> str:
        return self.hosts.base(request.scheme, request.host)

    # -- who is asking ----------------------------------------------------

    async def authed(self, request: web.Request) -> Authed | None:
        session = self.signer.read(request.cookies.get(COOKIE_NAME), time.time())
        if session is None:
            return None
        _, revocations = await self.guards()
        if await revocations.revoked(session.nonce):
            return None  # signed out: a copy of the cookie is worth nothing
        account = await self.reader.account(session.operator_id)
        if account is None or not self.signer.current(session, account):
            return None  # removed, or password / roles / permissions changed since the sign-in
        return Authed(account=account, session=session, problem=access_problem(account))

    async def api_user(self, request: web.Request, *, changes: bool, admin_may: bool = False) -> Authed:
        """The operator behind an API request; state-changing requests must carry the CSRF header.

        ``admin_may``: an administrator may use it without the workspace's own requirements.
        """
        user = await self.authed(request)
        if user is None:
            raise ApiError(401, "unauthenticated", "sign in first")
        if user.problem and not (admin_may and ADMIN_ROLE in user.account.roles):
            raise ApiError(403, "forbidden", user.problem)
        if changes and not self.signer.csrf_ok(user.session.nonce, request.headers.get(CSRF_HEADER)):
            raise ApiError(403, "csrf", f"missing or wrong {CSRF_HEADER} header; reload the page")
        return user

    async def may_read(self, user: Authed, session: Session, entries: list[HistoryEntry] | None = None) -> bool:
        """Whether this user may read the session's transcript and client card.

        Its operators (now or before) may; so may the operators of its line (they
        find it in the views and the search: the queue, all chats of their lines,
        closed ones); so may whoever holds an open chat of the same client (the
        earlier conversations are that chat's context); so may supervisors (they
        read a live chat before intercepting it).
        """
        me = user.operator_id
        if supervisor_problem(user.account.roles) is None:
            return True
        if session.operator_id == me or me in session.offered_to or session.closed_by == me:
            return True
        if any(line.id == session.line_id for line in await self.lines.of(me)):
            return True
        if entries is not None and any(e.author_id == me for e in entries):
            return True
        if await holds_client(self.reader, me, session.client_id):
            return True
        # A conversation of a client merged since into another (decision 024): that client's chat is its context too.
        record = await client_record(self.reader, session)
        return (
            record is not None and record.client_id != session.client_id and await holds_client(self.reader, me, record.client_id)
        )

    def crm_refs(self, link: dict[str, Any]) -> list[dict[str, str]]:
        """The CRM records a client is linked to, each with where to open it."""
        out: list[dict[str, str]] = []
        portal = self.settings.bitrix24_portal.rstrip("/")
        for kind in ("contact", "lead", "deal"):
            record_id = str(link.get(f"{kind}_id") or "")
            if not record_id:
                continue
            if self.settings.crm_backend == "builtin":
                url = f"/crm?record={record_ref(kind, record_id)}#{record_ref(kind, record_id)}"
            elif portal:
                url = f"{portal}/crm/{kind}/details/{record_id}/"
            else:
                url = ""
            out.append({"kind": kind, "id": record_id, "url": url})
        return out

    def form_csrf_ok(self, request: web.Request, user: Authed, form: Any) -> bool:
        if self.signer.csrf_ok(user.session.nonce, request.headers.get(CSRF_HEADER)):
            return True
        token = form.get(CSRF_FIELD)
        return (
            isinstance(token, str)
            and self.signer.csrf_ok(user.session.nonce, token)
            and same_origin(request.headers.get("Origin"), request.headers.get("Referer"), request.host)
        )

    # -- cookies ----------------------------------------------------------

    def secure_cookies(self, request: web.Request) -> bool:
        https = request.scheme == "https"
        if self.settings.trust_forwarded_for:
            https = https or request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip().lower() == "https"
        return self.settings.secure_cookies(https)

    def set_session_cookie(self, request: web.Request, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=self.settings.session_hours * 3600,
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self.secure_cookies(request),
        )

    def carry_over(self, request: web.Request, response: web.StreamResponse, user: Authed, account: OperatorAccount) -> None:
        """Keep this browser's session after a change to its own account (other sessions of the account end).

        Same nonce (its pages' CSRF tokens stay valid) and the same expiry, with the new credential stamp.
        """
        value, _ = self.signer.issue(account, time.time(), 0, nonce=user.session.nonce, expires=user.session.expires)
        self.set_session_cookie(request, response, value)

    def login_response(self, request: web.Request, *, status: int = 200, error: str = "", login: str = "") -> web.Response:
        nonce = request.cookies.get(LOGIN_COOKIE_NAME) or ""
        if not is_token(nonce):
            nonce = secrets.token_urlsafe(18)
        response = html(views.login_page(self.signer.login_token(nonce), error=error, login=login), status=status)
        response.set_cookie(
            LOGIN_COOKIE_NAME,
            nonce,
            max_age=LOGIN_FORM_TTL,
            path="/login",
            httponly=True,
            samesite="Lax",
            secure=self.secure_cookies(request),
        )
        return response

    # -- commands -----------------------------------------------------------

    async def command(self, name: CommandName, cmd: Any) -> Result:
        """Ask the router; a command safe to repeat is asked again while the router does not answer, for up to
        ``command_retry_seconds`` (decision 032). Its refusals and the lack of an answer become ApiErrors."""
        budget = self.settings.command_retry_seconds
        repeats = 0

        def asked_again(reason: str) -> None:
            nonlocal repeats
            repeats += 1
            COMMAND_REPEATS.labels(name).inc()
            log.info("command asked again", extra={"command": name, "repeat": repeats, "reason": reason})

        outcome = "failed"
        try:
            if name in commands.REPEATABLE and budget > 0:
                result = await commands.call_repeating(self.nc, name, cmd, budget=budget, asked_again=asked_again)
            else:
                result = await commands.call(self.nc, name, cmd)
            outcome = "ok"
            return result
        except CommandFailed as exc:
            outcome = code = exc.result.error or "failed"
            raise ApiError(HTTP_STATUS_OF.get(code, 502), code, exc.result.detail or code) from None
        except commands.NoAnswer as exc:
            outcome = "unavailable"
            log.warning("router did not answer a command", extra={"command": name, "tries": exc.tries, "reason": exc.reason})
            detail = f"router unavailable: {exc.reason}; asked {exc.tries} times in {exc.waited:.0f} s. Asking again is safe"
            raise ApiError(503, "unavailable", detail) from None
        except nats.errors.NoRespondersError:
            outcome = "unavailable"
            raise ApiError(503, "unavailable", "router unavailable: no router is running; nothing was done") from None
        except (TimeoutError, nats.errors.Error):
            # Not asked again: the router may have done it, and this command is not safe to repeat.
            outcome = "unavailable"
            detail = f"router unavailable: no answer in time; the {name} may have been done - reload the chat before asking again"
            raise ApiError(503, "unavailable", detail) from None
        finally:
            if repeats:
                REPEATED_COMMANDS.labels(name, outcome).inc()


DESK = web.AppKey("desk", Desk)


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"})


def redirect(location: str) -> web.Response:
    """A 303 that can carry cookies (after a form post the browser GETs ``location``)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


@web.middleware
async def known_hosts(request: web.Request, handler: Any) -> web.StreamResponse:
    """400 for a Host the desk is not served as (DNS rebinding, links built from a forged Host)."""
    if request.path not in UNCHECKED_PATHS and not request.app[DESK].hosts.allows(request.host):
        why = "this desk is not served under that host name (see OPENLINES_DESK_PUBLIC_URL, OPENLINES_DESK_ALLOWED_HOSTS)"
        return json_error(400, "unknown_host", why)
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        # Unavailable (no router answering, the file store away): when a client such as a script may ask again.
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if exc.status == 503 else None
        return json_error(exc.status, exc.code, exc.detail, headers=retry)
    except bus.UNAVAILABLE as exc:
        if request.path == "/ws":  # a page's socket ends it its own way; it has answered already
            raise
        # A read the request needed met NATS away for a moment (a node lost, a connection being re-made): that is
        # "try again", not an error of the desk. A change the router made before it is stored; a reload shows it.
        log.warning("request met NATS unavailable", extra={"path": request.path, "error": repr(exc)})
        detail = "the message bus did not answer in time; asking again is safe (a change already made shows on reload)"
        return json_error(503, "unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.content_type == "text/html":
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        )


# -- pages ------------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.authed(request)
    home = landing(user.account) if user is not None else None
    if home is not None:
        raise web.HTTPSeeOther(home)
    return desk.login_response(request)


async def login_submit(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    form = await request.post()
    token = form.get(CSRF_FIELD)
    origin_ok = same_origin(request.headers.get("Origin"), request.headers.get("Referer"), request.host)
    token_ok = desk.signer.login_token_ok(request.cookies.get(LOGIN_COOKIE_NAME), token if isinstance(token, str) else None)
    if not origin_ok or not token_ok:
        LOGINS.labels("csrf").inc()
        return desk.login_response(request, status=403, error="The sign-in form expired. Please try again.")
    login = form.get("login")
    password = form.get("password")
    login = login.strip() if isinstance(login, str) else ""
    password = password if isinstance(password, str) else ""
    if not login or not password:
        return desk.login_response(request, status=400, error="Enter your login and password.", login=login)
    limiter, _ = await desk.guards()
    address = desk.client_address(request)
    verdict = await limiter.check(login, address, time.time())
    if verdict.retry_after:
        wait = verdict.retry_after
        LOGINS.labels("limited").inc()
        # Never the submitted login: people type their password into it.
        log.warning("sign-in rate limited", extra={"address": address, "retry_after": wait})
        minutes = max(1, -(-wait // 60))
        error = f"Too many failed sign-ins. Try again in {minutes} minute{'s' if minutes > 1 else ''}."
        response = desk.login_response(request, status=429, error=error, login=login)
        response.headers["Retry-After"] = str(wait)
        return response
    if verdict.slow:
        # This login fails from many addresses: every attempt on it waits, the right password too.
        LOGINS.labels("slowed").inc()
        log.warning("sign-in slowed: many failures for one login", extra={"address": address})
        await asyncio.sleep(desk.settings.login_slow_seconds)
    account = await desk.reader.account(login)
    stored = account.password_hash if account is not None and len(password) <= MAX_PASSWORD else None
    # argon2 takes tens of milliseconds of CPU: keep the event loop free meanwhile.
    ok = await asyncio.get_running_loop().run_in_executor(None, desk.passwords.verify, stored, password[:MAX_PASSWORD])
    if not ok or account is None:
        LOGINS.labels("wrong").inc()
        log.info("sign-in refused", extra={"reason": "wrong login or password"})
        await limiter.failed(login, address, time.time())
        return desk.login_response(request, status=401, error="Wrong login or password.", login=login)
    await limiter.succeeded(login, address)
    home = landing(account)
    if home is None:
        problem = access_problem(account) or "no access"
        LOGINS.labels("denied").inc()
        log.info("sign-in refused", extra={"operator": account.id, "reason": problem})
        return html(views.denied_page(account.name, problem), status=403)
    value, _ = desk.signer.issue(account, time.time(), desk.settings.session_hours * 3600)
    LOGINS.labels("ok").inc()
    log.info("signed in", extra={"operator": account.id, "home": home})
    # The workspace just after signing in: an operator starts online (the page does it, once).
    response = redirect(SIGNED_IN_HOME if home == "/" else home)
    desk.set_session_cookie(request, response, value)
    response.del_cookie(LOGIN_COOKIE_NAME, path="/login")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.authed(request)
    form = await request.post()
    if user is not None and not desk.form_csrf_ok(request, user, form):
        raise ApiError(403, "csrf", "missing or wrong CSRF token; reload the page")
    if user is not None:
        # Revoked server-side: every replica refuses this cookie from now on, and closes its live pages.
        _, revocations = await desk.guards()
        await revocations.revoke(user.session.nonce)
        with contextlib.suppress(nats.errors.Error):
            await desk.nc.publish(subjects.DESK_SIGNED_OUT, user.session.nonce.encode())
        log.info("signed out", extra={"operator": user.operator_id})
    response = redirect("/login")
    response.del_cookie(COOKIE_NAME, path="/")
    return response


async def workspace(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.authed(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    if user.problem and landing(user.account) == ADMIN_HOME:
        raise web.HTTPSeeOther(ADMIN_HOME)
    if user.problem:
        return html(views.denied_page(user.account.name, user.problem), status=403)
    return html(
        views.workspace_page(
            user.operator_id,
            user.account.name,
            desk.signer.csrf_token(user.session.nonce),
            nav=nav_links(user.account),
            max_upload=desk.settings.max_upload_bytes,
            start_online=request.query.get("signed_in") == "1" and "operator" in user.account.roles,
        )
    )


async def page_user(request: web.Request, *, admin_may: bool = False) -> Authed | web.Response:
    """The signed-in user of a page, or the answer to give instead (sign in / no access).

    ``admin_may``: an administrator may open the page without the workspace's own requirements
    (the open-lines permission, an operator or supervisor role).
    """
    desk = request.app[DESK]
    user = await desk.authed(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    if user.problem and not (admin_may and ADMIN_ROLE in user.account.roles):
        return html(views.denied_page(user.account.name, user.problem), status=403)
    return user


def _query(request: web.Request) -> tuple[str, str]:
    query = request.query.get("q", "").strip()
    if len(query) > MAX_QUERY:
        raise ApiError(400, "invalid", f"the search is {len(query)} characters; at most {MAX_QUERY}")
    record = request.query.get("record", "")
    if record and parse_ref(record) is None:
        raise ApiError(400, "invalid", "record must look like lead-5, deal-2 or contact-7")
    return query, record


async def _names(desk: Desk, ids: set[str]) -> dict[str, str]:
    accounts = await asyncio.gather(*(desk.reader.account(i) for i in sorted(ids) if i))
    return {a.id: a.name for a in accounts if a is not None}


async def crm_page(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await page_user(request, admin_may=True)
    if isinstance(user, web.Response):
        return user
    query, record = _query(request)
    view = await desk.crm.view(query, parse_ref(record) if record else None) if desk.settings.crm_backend == "builtin" else None
    names = await _names(desk, {str(r.get("assigned_by", "")) for rows in (view.records.values() if view else []) for r in rows})
    return html(
        views.crm_page(
            user.account.name,
            desk.signer.csrf_token(user.session.nonce),
            nav=nav_links(user.account),
            backend=desk.settings.crm_backend,
            portal=desk.settings.bitrix24_portal.rstrip("/"),
            query=query,
            record=record,
            view=view,
            names=names,
        )
    )


async def supervisor_page(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await page_user(request, admin_may=True)
    if isinstance(user, web.Response):
        return user
    problem = supervisor_problem(user.account.roles)
    if problem:
        return html(views.denied_page(user.account.name, problem, "the supervisor view"), status=403)
    return html(views.supervisor_page(user.account.name, desk.signer.csrf_token(user.session.nonce), nav=nav_links(user.account)))


async def transcript_page(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await page_user(request)
    if isinstance(user, web.Response):
        return user
    session = await desk.reader.session(_session_id(request))
    if session is None:
        raise ApiError(404, "not_found", "no such session")
    entries = await desk.reader.history(session.id)
    # Conversations filed in the built-in CRM are readable by whoever may open the CRM page.
    filed = desk.settings.crm_backend == "builtin" and await desk.crm.session_filed(session.id)
    if not filed and not await desk.may_read(user, session, entries):
        raise ApiError(403, "forbidden", "this conversation is not yours")
    return html(
        views.transcript_page(
            user.account.name,
            desk.signer.csrf_token(user.session.nonce),
            nav=nav_links(user.account),
            session=await desk.reader.chat(session),
            entries=msgspec.to_builtins(entries),
        )
    )


# -- live -------------------------------------------------------------------


async def websocket(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    # Browsers send cookies on cross-site WebSocket handshakes too; only our own pages may connect.
    if not same_origin(request.headers.get("Origin"), None, request.host):
        raise ApiError(403, "forbidden", "WebSocket from another origin")
    ws = web.WebSocketResponse(heartbeat=25.0, max_msg_size=4096)
    await ws.prepare(request)
    conn = Connection(ws, user.operator_id, user.session.nonce, user.session.stamp)
    # Register before reading the snapshot: whatever changes meanwhile is queued
    # behind it, so the page misses nothing (duplicates are idempotent upserts).
    desk.hub.add(conn)
    writer: asyncio.Task[None] | None = None
    try:
        # The account may have changed between the check above and the registration, when
        # the hub's account watch could not see this page yet: look once more.
        account = await desk.reader.account(user.operator_id)
        if account is None or not desk.signer.current(user.session, account):
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"credentials changed")
            return ws
        snapshot = await desk.reader.snapshot(user.operator_id)
        conn.shown.update(str(chat["id"]) for chat in snapshot["chats"])
        await ws.send_json(snapshot)
        writer = asyncio.create_task(conn.write_forever(), name=f"ws-writer-{user.operator_id}")
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
            # The page listens; all it says is that its operator is typing in a chat, or has seen the client's
            # messages in it (anything else is ignored).
            if msg.type == WSMsgType.TEXT and len(msg.data) <= 400:
                await _operator_frame(desk, conn, msg.data, account.name or user.operator_id)
    finally:
        desk.hub.remove(conn)
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if not ws.closed:
            await ws.close()
    return ws


async def _operator_frame(desk: Desk, conn: Connection, data: str, name: str) -> None:
    try:
        frame = msgspec.json.decode(data)
    except BAD_JSON:
        return
    if not isinstance(frame, dict):
        return
    sid = frame.get("session_id")
    if not (isinstance(sid, str) and is_token(sid)):
        return
    with contextlib.suppress(Exception):  # a lost "typing" or "seen" costs nothing: never the page's socket
        if frame.get("type") == "typing":
            await desk.hub.typing(conn, sid, name)
        elif frame.get("type") == "seen" and isinstance(upto := frame.get("upto"), str) and 0 < len(upto) <= 300:
            await desk.hub.seen(conn, sid, upto)


# -- JSON API ---------------------------------------------------------------


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"the body is over {MAX_JSON_BODY} bytes")
    raw = await request.read()
    if len(raw) > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"the body is over {MAX_JSON_BODY} bytes")
    try:
        data = msgspec.json.decode(raw) if raw else None
    except BAD_JSON:
        raise ApiError(400, "bad_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return data


def _session_id(request: web.Request) -> str:
    sid = request.match_info["session_id"]
    if not is_token(sid):
        raise ApiError(404, "not_found", "no such session")
    return sid


async def _chat_action(request: web.Request) -> tuple[Desk, Authed, str]:
    """The desk, the signed-in operator (a change: CSRF-checked) and the chat a chat action names."""
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=True)
    return desk, user, _session_id(request)


async def _supervisor(request: web.Request, *, changes: bool) -> tuple[Desk, Authed]:
    """The desk and the signed-in user, who must be a supervisor (or admin): else 403 with the reason."""
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=changes, admin_may=True)
    problem = supervisor_problem(user.account.roles)
    if problem:
        raise ApiError(403, "forbidden", problem)
    return desk, user


async def _result(desk: Desk, result: Result) -> web.Response:
    chat = await desk.reader.chat(result.session) if result.session is not None else None
    return web.json_response({"ok": True, "session": chat, "message_id": result.message_id})


async def api_status(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=True)
    body = await _body(request)
    status = body.get("status")
    if status not in STATUSES:
        raise ApiError(400, "invalid", f"status must be one of {', '.join(STATUSES)}")
    await desk.command("status", SetStatus(operator_id=user.operator_id, status=status))
    state = await desk.reader.operator(user.operator_id)
    return web.json_response({"ok": True, "status": state.status})


async def api_chats(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    snapshot = await desk.reader.snapshot(user.operator_id)
    return web.json_response({"operator": snapshot["operator"], "chats": snapshot["chats"]})


async def api_history(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    sid = _session_id(request)
    session = await desk.reader.session(sid)
    if session is None:
        raise ApiError(404, "not_found", "no such session")
    entries = await desk.reader.history(sid)
    if not await desk.may_read(user, session, entries):
        raise ApiError(403, "forbidden", "this session is not yours")
    marks = await desk.reader.marks(sid)
    return web.json_response(
        {"session": await desk.reader.chat(session), "entries": msgspec.to_builtins(entries), "marks": marks}
    )


async def api_client(request: web.Request) -> web.StreamResponse:
    """The client card of a session: profile, CRM link, earlier conversations."""
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    session = await desk.reader.session(_session_id(request))
    if session is None:
        raise ApiError(404, "not_found", "no such session")
    if not await desk.may_read(user, session):
        raise ApiError(403, "forbidden", "this session is not yours")
    record = await client_record(desk.reader, session)
    # The client as it is now (merged into another, its record says which) and every client merged into it.
    client_id = record.client_id if record is not None else session.client_id
    client_ids = [client_id, session.client_id, *(record.merged_ids if record is not None else [])]
    link, earlier, entries = await asyncio.gather(
        desk.crm.client_link(client_id),
        # From the desk's index once it has caught up (no stream read); until then the last events.
        desk.index.previous(client_ids, session.id, PREVIOUS_SHOWN)
        if desk.index.ready
        else previous_sessions(desk.reader, client_ids, exclude=session.id),
        # Only an e-mail conversation gathers other addresses (a colleague in copy who replied).
        desk.reader.history(session.id) if session.channel == "email" else asyncio.sleep(0, []),
    )
    profile = record.profile if record is not None else None
    crm: dict[str, Any] = {"backend": desk.settings.crm_backend, "linked": False, "records": []}
    if link is not None:
        crm.update(linked=True, records=desk.crm_refs(link), responsible=str(link.get("assigned_by", "")))
        if link.get("merged"):
            crm["merged"] = [str(x) for x in link["merged"]]  # what a merge kept and left (decision 024)
    return web.json_response(
        {
            "client": {
                "id": client_id,
                "name": (profile.name if profile else "") or session.client_name,
                "username": profile.username if profile else "",
                "phone": profile.phone if profile else "",
                "email": profile.email if profile else "",
                "emails": client_addresses(profile.email if profile else "", entries),
                # a web visitor's visit: the page they wrote from, where they came from, browser, language
                "page_url": profile.page_url if profile else "",
                "referrer": profile.referrer if profile else "",
                "browser": profile.browser if profile else "",
                "language": profile.language if profile else "",
                "consent": profile.consent if profile else "",
                "channel": session.channel,
                "account": session.account,
                "sessions_total": record.sessions_total if record is not None else 0,
                "edited": record.edited if record is not None else [],  # fields an operator set (decision 024)
                "chats": len(record.identities) + 1 if record is not None else 1,  # after merges: the client's chats
                "merged_ids": record.merged_ids if record is not None else [],  # clients merged into this one
            },
            "crm": crm,
            "previous": [await desk.reader.chat(s) for s in earlier],
            "previous_limit": {
                "from": "index" if desk.index.ready else "events",
                "events_scanned": PREVIOUS_SCAN_EVENTS,
                "shown": PREVIOUS_SHOWN,
            },
        }
    )


async def api_crm(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    await desk.api_user(request, changes=False)
    if desk.settings.crm_backend != "builtin":
        portal = desk.settings.bitrix24_portal.rstrip("/")
        return web.json_response({"backend": desk.settings.crm_backend, "portal": portal, "records": None})
    query, record = _query(request)
    view = await desk.crm.view(query, parse_ref(record) if record else None)
    return web.json_response(
        {
            "backend": "builtin",
            "present": view.present,
            "records": view.records,
            "totals": view.totals,
            "activities": view.activities,
        }
    )


async def api_supervisor(request: web.Request) -> web.StreamResponse:
    desk, _ = await _supervisor(request, changes=False)
    return web.json_response(await overview(desk.reader))


async def api_intercept(request: web.Request) -> web.StreamResponse:
    desk, user = await _supervisor(request, changes=True)
    sid = _session_id(request)
    return await _result(desk, await desk.command("intercept", Intercept(operator_id=user.operator_id, session_id=sid)))


async def api_accept(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    return await _result(desk, await desk.command("accept", Accept(operator_id=user.operator_id, session_id=sid)))


async def api_reply(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    body = await _body(request)
    text = body.get("text", "")
    client_msg_id = body.get("client_msg_id")
    file_ids = body.get("files", [])
    template = _template_choice(body.get("template"))
    if template is not None:
        text, file_ids = "", []  # a template is sent as approved: no free text, no files with it
    if not isinstance(file_ids, list) or not all(isinstance(f, str) and is_token(f) for f in file_ids):
        raise ApiError(400, "invalid", "files must be a list of file ids returned by the upload")
    if len(file_ids) > MAX_FILES_PER_REPLY:
        raise ApiError(400, "invalid", f"{len(file_ids)} files; at most {MAX_FILES_PER_REPLY} per reply")
    if not isinstance(text, str) or (not text.strip() and not file_ids and template is None):
        raise ApiError(400, "invalid", "text must be a non-empty string (or attach a file, or choose a template)")
    if len(text) > MAX_TEXT:
        raise ApiError(413, "too_large", f"text is {len(text)} characters; at most {MAX_TEXT}")
    if not isinstance(client_msg_id, str) or not is_token(client_msg_id):
        raise ApiError(400, "invalid", "client_msg_id must be 1-64 characters of A-Z a-z 0-9 _ -")
    attachments = await _attachments(request, desk, sid, list(dict.fromkeys(file_ids)))
    cmd = Reply(
        operator_id=user.operator_id,
        session_id=sid,
        text=text,
        client_msg_id=client_msg_id,
        attachments=attachments,
        template=template,
    )
    return await _result(desk, await desk.command("reply", cmd))


def _template_choice(raw: Any) -> TemplateChoice | None:
    """``{"name", "language"?, "params": [...]}`` of a reply that sends an approved template (the router checks it)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ApiError(400, "invalid", "template must be an object with the template's name and its params")
    params = raw.get("params", [])
    language = raw.get("language", "")
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params) or len(params) > 20:
        raise ApiError(400, "invalid", "template params must be a list of strings, one per variable")
    if not isinstance(language, str) or len(language) > 16 or len(raw["name"]) > 512:
        raise ApiError(400, "invalid", "template name or language is not one of a template")
    return TemplateChoice(name=raw["name"], language=language, params=params)


async def _attachments(request: web.Request, desk: Desk, sid: str, file_ids: list[str]) -> list[Attachment]:
    """The uploaded files a reply names, as the router sends them: each must be in this chat's store.

    The router checks that the chat is this operator's and sends text and files
    as one message (and one transcript entry); a retried reply with the same
    ``client_msg_id`` is the same message, so it is delivered once.
    """
    if not file_ids:
        return []
    store = await desk.files()
    try:
        found = await asyncio.gather(*(store.info(sid, fid) for fid in file_ids))
    except (TimeoutError, nats.errors.Error):
        raise ApiError(503, "unavailable", "the files could not be read; send again") from None
    missing = [fid for fid, f in zip(file_ids, found, strict=True) if f is None]
    if missing:
        raise ApiError(400, "invalid", f"no uploaded file {missing[0]!r} in this chat; upload it again")
    base = desk.public_base(request)
    return [f.attachment(base) for f in found if f is not None]


async def api_skip(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    await desk.command("skip", Skip(operator_id=user.operator_id, session_id=sid))
    return web.json_response({"ok": True, "session": None, "message_id": ""})


async def api_transfer(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    body = await _body(request)
    to_operator = body.get("to_operator", "")
    to_line = body.get("to_line", "")
    if not isinstance(to_operator, str) or not isinstance(to_line, str) or bool(to_operator) == bool(to_line):
        raise ApiError(400, "invalid", "give exactly one of to_operator (an operator id) or to_line (a line id)")
    target = to_operator or to_line
    if not is_token(target):
        raise ApiError(400, "invalid", "the operator or line id must be 1-64 characters of A-Z a-z 0-9 _ -")
    comment = body.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 1000:
        raise ApiError(400, "invalid", "comment must be text of at most 1000 characters")
    cmd = Transfer(operator_id=user.operator_id, session_id=sid, to_operator=to_operator, to_line=to_line, comment=comment)
    return await _result(desk, await desk.command("transfer", cmd))


async def api_note(request: web.Request) -> web.StreamResponse:
    """A private note in the conversation (never sent to the client); ``@login`` tells that colleague."""
    desk, user, sid = await _chat_action(request)
    body = await _body(request)
    text, client_msg_id = body.get("text", ""), body.get("client_msg_id", "")
    if not isinstance(text, str) or not text.strip() or len(text) > 4000:
        raise ApiError(400, "invalid", "text must be 1-4000 characters")
    if not isinstance(client_msg_id, str) or not is_token(client_msg_id):
        raise ApiError(400, "invalid", "client_msg_id must be 1-64 characters of A-Z a-z 0-9 _ -")
    cmd = Note(operator_id=user.operator_id, session_id=sid, text=text, client_msg_id=client_msg_id)
    return await _result(desk, await desk.command("note", cmd))


async def api_pin(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    body = await _body(request)
    pinned = body.get("pinned", True)
    if not isinstance(pinned, bool):
        raise ApiError(400, "invalid", "pinned must be true or false")
    return await _result(desk, await desk.command("pin", Pin(operator_id=user.operator_id, session_id=sid, pinned=pinned)))


async def api_spam(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    return await _result(desk, await desk.command("spam", Spam(operator_id=user.operator_id, session_id=sid)))


async def api_directory(request: web.Request) -> web.StreamResponse:
    """What the workspace's pickers offer: lines (with quick answers) and operators to transfer to."""
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    lines, accounts, states = await asyncio.gather(
        load_lines(desk.reader.js),
        kv_entries(desk.reader.js, subjects.KV_ACCOUNTS),
        kv_entries(desk.reader.js, subjects.KV_OPERATORS),
    )
    operators = []
    for key, (_rev, data) in sorted(accounts.items()):
        try:
            account = msgspec.json.decode(data, type=OperatorAccount)
        except msgspec.DecodeError:
            continue
        if key == user.operator_id or access_problem(account) is not None:
            continue
        status = "offline"
        if key in states:
            with contextlib.suppress(msgspec.DecodeError):
                status = msgspec.json.decode(states[key][1], type=OperatorState).status
        operators.append({"id": account.id, "name": account.name, "status": status})
    return web.json_response(
        {
            "lines": [
                {"id": line.id, "name": line.name, "wait_seconds": line.queue.wait_seconds, "quick_answers": line.quick_answers}
                for line in sorted(lines, key=lambda x: (x.name.lower(), x.id))
            ],
            "operators": operators,
        }
    )


async def api_upload(request: web.Request) -> web.StreamResponse:
    """One file for a reply (multipart field ``file``); answers its id to send with the reply."""
    desk, user, sid = await _chat_action(request)
    limit = desk.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise ApiError(413, "too_large", f"the file is over {limit} bytes")
    session = await desk.reader.session(sid)
    me = user.operator_id
    if session is None:
        raise ApiError(404, "not_found", "no such session")
    if not session.is_open or (session.operator_id != me and me not in session.offered_to):
        raise ApiError(403, "forbidden", "files can only be sent in your own open chats")
    if not request.content_type.startswith("multipart/form-data"):
        raise ApiError(400, "invalid", "send the file as multipart/form-data in a field named file")
    name, mime, data = await _read_file_part(request, limit)
    try:
        stored = await (await desk.files()).put(sid, name, mime, data)
    except FileRefused as exc:
        raise ApiError(exc.status, "unsupported" if exc.status == 415 else "invalid", str(exc)) from None
    except (TimeoutError, nats.errors.Error):
        raise ApiError(503, "unavailable", "the file could not be stored; try again") from None
    log.info("file uploaded", extra={"operator": me, "session": sid, "bytes": stored.size, "mime": mime})
    return web.json_response(
        {
            "ok": True,
            "file": {
                "id": stored.file_id,
                "name": stored.name,
                "mime": stored.mime,
                "size": stored.size,
                "kind": stored.attachment("").kind,
                "url": stored.path,
            },
        }
    )


async def _read_file_part(request: web.Request, limit: int) -> tuple[str, str, bytes]:
    try:
        return await edge.read_file_part(request, limit)
    except edge.TooLarge:
        raise ApiError(413, "too_large", f"the file is over {limit} bytes") from None
    except edge.BadUpload as exc:
        raise ApiError(400, "invalid", str(exc)) from None


async def file_download(request: web.Request) -> web.StreamResponse:
    """A file an operator sent, for operators who may read the chat (the client's channel gets it by reference)."""
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    sid = request.match_info["session_id"]
    fid = request.match_info["file_id"]
    if not is_token(sid) or not is_token(fid):
        raise ApiError(404, "not_found", "no such file")
    await _readable_session(desk, user, sid)
    got = await (await desk.files()).get(sid, fid)
    if got is None:
        raise ApiError(404, "not_found", "no such file")
    stored, data = got
    return _file_response(data, stored.name, stored.mime, download=not stored.mime.startswith("image/"), declared=True)


async def api_file(request: web.Request) -> web.StreamResponse:
    """``GET /api/sessions/<sid>/file?ref=<ref>[&download=1]``: a file the chat's transcript names.

    Clients' files (what the gateways stored) and operators' alike, for operators
    who may read the session: the reference must be one of this session's
    attachments, so a reference seen elsewhere opens nothing here. Images,
    audio and video the browser can show are served inline (previews,
    players); anything else, and any file with ``download=1``, as a download.
    """
    desk = request.app[DESK]
    user = await desk.api_user(request, changes=False)
    sid = _session_id(request)
    value = request.query.get("ref", "")
    if files.parse_ref(value) is None:
        raise ApiError(404, "not_found", "no such file")
    entries = await _readable_session(desk, user, sid)
    att = next((a for e in entries for a in e.attachments if a.ref == value), None)
    if att is None:
        raise ApiError(404, "not_found", "no such file in this chat")
    try:
        stored = await desk.file_reader.get(value)
    except files.FileGone:
        raise ApiError(404, "not_found", "the file is no longer kept") from None
    except files.StoreUnavailable:
        raise ApiError(503, "unavailable", "the file could not be read; try again") from None
    name = att.name or stored.meta.name or att.kind
    return _file_response(stored.data, name, att.mime or stored.meta.mime, download=request.query.get("download") == "1")


async def _readable_session(desk: Desk, user: Authed, sid: str) -> list[HistoryEntry]:
    session = await desk.reader.session(sid)
    if session is None:
        raise ApiError(404, "not_found", "no such session")
    entries = await desk.reader.history(sid)
    if await desk.may_read(user, session, entries):
        return entries
    # As its transcript page: a conversation filed in the built-in CRM is readable by whoever may open the CRM page.
    if desk.settings.crm_backend == "builtin" and await desk.crm.session_filed(sid):
        return entries
    raise ApiError(403, "forbidden", "this session is not yours")


def _file_response(data: bytes, name: str, mime: str, *, download: bool, declared: bool = False) -> web.Response:
    """The bytes, never able to run as a page of the desk.

    Shown inline only when a browser shows it as an image (the bytes checked),
    or plays it as audio or video; anything else is a download, typed
    ``application/octet-stream`` unless ``declared`` (our own allow-listed uploads).
    """
    shown = files.shown_as(mime, data[:16])
    inline = shown is not None and not download
    if shown == "image":
        content_type = files.sniff_image(data[:16]) or mime
    elif shown is not None or declared:
        content_type = mime
    else:
        content_type = "application/octet-stream"
    disposition = f"{'inline' if inline else 'attachment'}; filename*=UTF-8''{quote(files.clean_name(name), safe='')}"
    return web.Response(
        body=data,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": disposition,
            "Cache-Control": "private, max-age=86400",
            # Never run as a page of the desk, whatever the bytes are.
            "Content-Security-Policy": "sandbox; default-src 'none'",
        },
    )


async def api_close(request: web.Request) -> web.StreamResponse:
    desk, user, sid = await _chat_action(request)
    return await _result(desk, await desk.command("close", Close(operator_id=user.operator_id, session_id=sid)))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", workspace)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/api/status", api_status)
    app.router.add_get("/api/chats", api_chats)
    app.router.add_get("/crm", crm_page)
    app.router.add_get("/api/crm", api_crm)
    app.router.add_get("/supervisor", supervisor_page)
    app.router.add_get("/api/supervisor", api_supervisor)
    app.router.add_get("/transcript/{session_id}", transcript_page)
    app.router.add_get("/api/sessions/{session_id}/client", api_client)
    app.router.add_get("/api/sessions/{session_id}/history", api_history)
    app.router.add_post("/api/sessions/{session_id}/accept", api_accept)
    app.router.add_post("/api/sessions/{session_id}/reply", api_reply)
    app.router.add_post("/api/sessions/{session_id}/close", api_close)
    app.router.add_post("/api/sessions/{session_id}/intercept", api_intercept)
    app.router.add_post("/api/sessions/{session_id}/skip", api_skip)
    app.router.add_post("/api/sessions/{session_id}/transfer", api_transfer)
    app.router.add_post("/api/sessions/{session_id}/note", api_note)
    app.router.add_post("/api/sessions/{session_id}/pin", api_pin)
    app.router.add_post("/api/sessions/{session_id}/spam", api_spam)
    app.router.add_post("/api/sessions/{session_id}/files", api_upload)
    app.router.add_get("/api/sessions/{session_id}/file", api_file)
    app.router.add_get("/api/directory", api_directory)
    app.router.add_get("/files/{session_id}/{file_id}/{name}", file_download)
