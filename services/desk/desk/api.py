"""The admin REST API under /api/v1: lines, operators, sessions, stats.

Token-authenticated only (``Authorization: Bearer olt_…``, see desk.tokens):
cookies are ignored here, so a browser page of another site cannot make a
signed-in admin's browser change anything (no CSRF surface). Each operation
names the token roles it serves; the OpenAPI document (desk.openapi) is built
from the same table the routes are registered from.

Changes to the configuration go through :class:`desk.config.ConfigStore`
(openlines.apply; the router hot-reloads) and need ``If-Match: <version>``
from a previous read, so two scripts or admins never silently overwrite each
other. Bad input is a 4xx ``{"error", "detail"}`` (plus ``errors`` per key for
an invalid configuration) and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import nats.errors
from aiohttp import web

from desk.config import ConfigStore, Conflict, Snapshot, diagnosed, operator_view, valid_version
from desk.reads import Reader, is_token
from desk.stats import Aggregator, report
from desk.tokens import ApiToken, TokenStore
from openlines import subjects
from openlines.bus import kv_entries
from openlines.envelopes import BAD_JSON
from openlines.lines import PERMISSION_OPENLINES, ConfigError, LineConfig, LinesFile, OperatorConfig, check
from openlines.roles import ADMIN_ROLES, SUPERVISOR_ROLES
from openlines.state import Session

log = logging.getLogger("desk.api")

PREFIX = "/api/v1"
MAX_BODY = 256 * 1024
MAX_NAME = 200
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
PERMISSIONS = (PERMISSION_OPENLINES,)
SESSION_STATUSES = ("waiting", "assigned", "answered", "closed")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_RANGE_DAYS = 366
ADMIN = ADMIN_ROLES
STAFF = SUPERVISOR_ROLES


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str, errors: list[str] | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors


UNAVAILABLE_RETRY_AFTER = 2  # seconds a script should wait when NATS did not answer


def problem_response(exc: Problem) -> web.Response:
    body: dict[str, Any] = {"error": exc.code, "detail": exc.detail}
    if exc.errors is not None:
        body["errors"] = exc.errors
    headers = {"WWW-Authenticate": 'Bearer realm="openlines"'} if exc.status == 401 else None
    if exc.status == 503:
        headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER)}
    return web.json_response(body, status=exc.status, headers=headers)


class OperatorBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    roles: list[str] = msgspec.field(default_factory=lambda: ["operator"])
    permissions: list[str] = msgspec.field(default_factory=lambda: [PERMISSION_OPENLINES])
    password: str | None = None  # set a new password (hashed with argon2); omitted = keep the current one


@dataclass(slots=True)
class Staff:
    """What the admin API and pages share, built once per desk."""

    reader: Reader
    store: ConfigStore
    tokens: TokenStore
    hasher: Callable[[str], str]
    stats: Aggregator

    async def hash_password(self, password: str) -> str:
        # argon2 takes tens of milliseconds of CPU: keep the event loop free meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, self.hasher, password)


STAFF_KEY = web.AppKey("staff", Staff)

Handler = Callable[[web.Request, Staff, ApiToken], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str  # relative to PREFIX
    handler: Handler
    roles: tuple[str, ...]
    summary: str
    query: tuple[str, ...] = ()  # names of query parameters (described in desk.openapi)
    body: str = ""  # request schema name in desk.openapi, "" = none
    if_match: bool = False
    ok: int = 200
    responses: tuple[int, ...] = ()  # error statuses besides 401 and 403


# -- request helpers --------------------------------------------------------------------------


async def authenticate(request: web.Request, staff: Staff, roles: tuple[str, ...]) -> ApiToken:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(401, "unauthenticated", "send Authorization: Bearer <token>; `openlines desk token create` makes one")
    token = await staff.tokens.verify(value.strip())
    if token is None:
        raise Problem(401, "unauthenticated", "unknown or revoked token")
    if token.expired(datetime.now(UTC)):
        expired_at = token.expires_at.isoformat(timespec="seconds") if token.expires_at else ""
        raise Problem(401, "token_expired", f"token {token.id} expired at {expired_at}; create a new one")
    if token.role not in roles:
        raise Problem(403, "forbidden", f"this needs a token with the {' or '.join(roles)} role; this one acts as {token.role}")
    return token


async def json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, "too_large", f"the body is over {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise Problem(413, "too_large", f"the body is over {MAX_BODY} bytes")
    try:
        return msgspec.json.decode(raw) if raw else None
    except BAD_JSON:
        raise Problem(400, "bad_json", "the body is not valid JSON") from None


def path_id(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not is_token(value):
        raise Problem(404, "not_found", f"{name} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def expected_version(request: web.Request) -> str:
    value = request.headers.get("If-Match", "").strip().strip('"')
    if not value:
        raise Problem(428, "precondition_required", "send If-Match: <version> from a previous GET (see the version field)")
    if not valid_version(value):
        raise Problem(412, "version_mismatch", "If-Match is not a configuration version; GET the resource again")
    return value


def versioned(body: dict[str, Any], version: str, status: int = 200) -> web.Response:
    return web.json_response({"version": version, **body}, status=status, headers={"ETag": f'"{version}"'})


async def save(staff: Staff, cfg: LinesFile, request: web.Request, token: ApiToken) -> tuple[list[str], str]:
    try:
        return await staff.store.save(cfg, expected_version(request), f"token {token.id}")
    except ConfigError as exc:
        raise Problem(400, "invalid", "the configuration would be invalid; nothing changed", list(exc.errors)) from None
    except Conflict as exc:
        raise Problem(412, "version_mismatch", f"the configuration changed meanwhile (now {exc.current}); GET it again") from None


async def findings_of(cfg: LinesFile) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(f) for f in await diagnosed(cfg)]


# -- lines --------------------------------------------------------------------------------------


async def list_lines(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    snap = await staff.store.snapshot()
    return versioned({"lines": [msgspec.to_builtins(line) for line in snap.cfg.lines]}, snap.version)


async def get_line(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    line_id = path_id(request, "line_id")
    snap = await staff.store.snapshot()
    line = snap.line(line_id)
    if line is None:
        raise Problem(404, "not_found", f"no line {line_id!r}")
    return versioned({"line": msgspec.to_builtins(line)}, snap.version)


async def put_line(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    line_id = path_id(request, "line_id")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Problem(400, "invalid", "the body must be a JSON object: a line as GET returns it")
    if body.setdefault("id", line_id) != line_id:
        raise Problem(400, "invalid", "id in the body differs from the line id in the path")
    try:
        line = msgspec.convert(body, LineConfig)
    except msgspec.ValidationError as exc:
        raise Problem(400, "invalid", str(exc).replace("`$.", "`"), [str(exc).replace("`$.", "`")]) from None
    snap = await staff.store.snapshot()
    existed = snap.line(line_id) is not None
    lines = [line if old.id == line_id else old for old in snap.cfg.lines] if existed else [*snap.cfg.lines, line]
    cfg = LinesFile(operators=snap.cfg.operators, lines=lines)
    changes, version = await save(staff, cfg, request, token)
    log.info("line saved", extra={"line": line_id, "by": f"token {token.id}"})
    return versioned(
        {"line": msgspec.to_builtins(line), "changes": changes, "findings": await findings_of(cfg)},
        version,
        200 if existed else 201,
    )


async def delete_line(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    line_id = path_id(request, "line_id")
    snap = await staff.store.snapshot()
    if snap.line(line_id) is None:
        raise Problem(404, "not_found", f"no line {line_id!r}")
    cfg = LinesFile(operators=snap.cfg.operators, lines=[line for line in snap.cfg.lines if line.id != line_id])
    changes, version = await save(staff, cfg, request, token)
    log.info("line removed", extra={"line": line_id, "by": f"token {token.id}"})
    return versioned({"changes": changes}, version)


async def doctor(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    snap = await staff.store.snapshot()
    return versioned({"findings": await findings_of(snap.cfg)}, snap.version)


# -- operators ----------------------------------------------------------------------------------


async def _operators(snap: Snapshot) -> list[dict[str, Any]]:
    found = await diagnosed(snap.cfg)
    return [operator_view(snap.cfg, op_id, found) for op_id in sorted(snap.cfg.operators)]


async def list_operators(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    snap = await staff.store.snapshot()
    return versioned({"operators": await _operators(snap)}, snap.version)


async def get_operator(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    op_id = path_id(request, "operator_id")
    snap = await staff.store.snapshot()
    if op_id not in snap.cfg.operators:
        raise Problem(404, "not_found", f"no operator {op_id!r}")
    return versioned({"operator": operator_view(snap.cfg, op_id, await diagnosed(snap.cfg))}, snap.version)


def operator_problems(body: OperatorBody) -> list[str]:
    errors = []
    if not body.name.strip() or len(body.name) > MAX_NAME:
        errors.append(f"name: must be 1-{MAX_NAME} characters")
    for perm in body.permissions:
        if perm not in PERMISSIONS:
            errors.append(f"permissions: unknown permission {perm!r} (one of {', '.join(PERMISSIONS)})")
    if body.password is not None and not MIN_PASSWORD <= len(body.password) <= MAX_PASSWORD:
        errors.append(f"password: must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    return errors


async def put_operator(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    op_id = path_id(request, "operator_id")
    raw = await json_body(request)
    try:
        body = msgspec.convert(raw, OperatorBody)
    except msgspec.ValidationError as exc:
        raise Problem(400, "invalid", str(exc).replace("`$.", "`")) from None
    errors = operator_problems(body)
    if errors:
        raise Problem(400, "invalid", "; ".join(errors), errors)
    expected = expected_version(request)
    snap = await staff.store.snapshot()
    old = snap.cfg.operators.get(op_id)
    updated = OperatorConfig(
        name=body.name.strip(),
        password_hash=old.password_hash if old else "",
        roles=list(dict.fromkeys(body.roles)),
        permissions=list(dict.fromkeys(body.permissions)),
    )
    cfg = LinesFile(operators={**snap.cfg.operators, op_id: updated}, lines=snap.cfg.lines)
    # Refuse what would fail anyway before paying for argon2.
    invalid = check(cfg)
    if invalid:
        raise Problem(400, "invalid", "the configuration would be invalid; nothing changed", invalid)
    if snap.version != expected:
        raise Problem(412, "version_mismatch", f"the configuration changed meanwhile (now {snap.version}); GET it again")
    if body.password is not None:
        updated.password_hash = await staff.hash_password(body.password)
    changes, version = await save(staff, cfg, request, token)
    log.info("operator saved", extra={"operator": op_id, "by": f"token {token.id}"})
    view = operator_view(cfg, op_id, await diagnosed(cfg))
    return versioned({"operator": view, "changes": changes}, version, 200 if old is not None else 201)


async def delete_operator(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    op_id = path_id(request, "operator_id")
    snap = await staff.store.snapshot()
    if op_id not in snap.cfg.operators:
        raise Problem(404, "not_found", f"no operator {op_id!r}")
    cfg = LinesFile(operators={k: v for k, v in snap.cfg.operators.items() if k != op_id}, lines=snap.cfg.lines)
    changes, version = await save(staff, cfg, request, token)
    log.info("operator removed", extra={"operator": op_id, "by": f"token {token.id}"})
    return versioned({"changes": changes}, version)


# -- sessions -----------------------------------------------------------------------------------


def _choice(request: web.Request, name: str, allowed: tuple[str, ...] | None = None) -> str:
    value = request.query.get(name, "")
    if not value:
        return ""
    if allowed is not None and value not in allowed:
        raise Problem(400, "invalid", f"{name} must be one of {', '.join(allowed)}")
    if allowed is None and not is_token(value):
        raise Problem(400, "invalid", f"{name} must be 1-64 characters of A-Z a-z 0-9 _ -")
    return value


def parse_instant(value: str, name: str, *, end_of_day: bool = False, tz: tzinfo = UTC) -> datetime:
    """``2026-11-25`` (that day in ``tz``; as an end: the day after) or an ISO 8601 time (no zone = ``tz``), in UTC."""
    try:
        if len(value) == 10:
            day = datetime.combine(datetime.strptime(value, "%Y-%m-%d").date(), time(), tzinfo=tz)
            return (day + timedelta(days=1) if end_of_day else day).astimezone(UTC)
        at = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise Problem(400, "invalid", f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time") from None
    at = at.replace(tzinfo=tz) if at.tzinfo is None else at
    at = at.astimezone(UTC)
    if not 2000 <= at.year <= 9000:
        raise Problem(400, "invalid", f"{name} is outside the years 2000-9000")
    return at


def date_range(request: web.Request, now: datetime, default_days: int, tz: tzinfo = UTC) -> tuple[datetime, datetime]:
    raw_to, raw_from = request.query.get("to", ""), request.query.get("from", "")
    end = parse_instant(raw_to, "to", end_of_day=True, tz=tz) if raw_to else now
    start = parse_instant(raw_from, "from", tz=tz) if raw_from else end - timedelta(days=default_days)
    if start >= end:
        raise Problem(400, "invalid", "from must be before to")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise Problem(400, "invalid", f"the range is over {MAX_RANGE_DAYS} days")
    return start, end


def time_zone(request: web.Request, default: str = "UTC") -> ZoneInfo:
    """The ``tz`` query parameter (an IANA name), or ``default``."""
    name = request.query.get("tz", "") or default
    try:
        if len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):  # malformed, a directory of the database, unknown
        raise Problem(400, "invalid", "tz must be an IANA time zone name like Europe/Riga") from None


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "")
    if not raw:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise Problem(400, "invalid", f"limit must be a whole number 1-{MAX_LIMIT}")
    return int(raw)


async def list_sessions(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    line = _choice(request, "line")
    status = _choice(request, "status", SESSION_STATUSES)
    operator = _choice(request, "operator")
    channel = _choice(request, "channel")
    start, end = date_range(request, datetime.now(UTC), MAX_RANGE_DAYS)
    limit = _limit(request)
    found: list[Session] = []
    for _key, (_rev, data) in (await kv_entries(staff.reader.js, subjects.KV_SESSIONS)).items():
        try:
            s = msgspec.json.decode(data, type=Session)
        except msgspec.DecodeError:
            continue
        if (line and s.line_id != line) or (status and s.status != status) or (channel and s.channel != channel):
            continue
        if operator and s.operator_id != operator and s.closed_by != operator:
            continue
        if start <= s.opened_at < end:
            found.append(s)
    found.sort(key=lambda s: s.opened_at, reverse=True)
    return web.json_response({"total": len(found), "sessions": [msgspec.to_builtins(s) for s in found[:limit]]})


async def _session(request: web.Request, staff: Staff) -> Session:
    sid = path_id(request, "session_id")
    session = await staff.reader.session(sid)
    if session is None:
        raise Problem(404, "not_found", f"no session {sid!r}")
    return session


async def get_session(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    return web.json_response({"session": await staff.reader.chat(await _session(request, staff))})


async def get_transcript(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    session = await _session(request, staff)
    entries = await staff.reader.history(session.id)
    return web.json_response({"session_id": session.id, "entries": msgspec.to_builtins(entries)})


# -- stats --------------------------------------------------------------------------------------


async def stats(request: web.Request, staff: Staff, token: ApiToken) -> web.StreamResponse:
    line = _choice(request, "line")
    tz = time_zone(request)
    start, end = date_range(request, datetime.now(UTC), 7, tz)
    snap = await staff.store.snapshot()
    if line and snap.line(line) is None:
        raise Problem(404, "not_found", f"no line {line!r}")
    ids = [line] if line else [x.id for x in snap.cfg.lines]
    names = {x.id: x.name for x in snap.cfg.lines}
    ops = {op_id: op.name for op_id, op in snap.cfg.operators.items()}
    figures, behind = await report(staff.stats, ids, start, end, names, ops, tz)
    return web.json_response(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "tz": tz.key,
            "lines": msgspec.to_builtins(figures),
            "behind": behind,
        }
    )


# -- the table ----------------------------------------------------------------------------------

PUT_RESPONSES = (201, 400, 404, 412, 413, 428, 503)


def _put(path: str, handler: Handler, summary: str, body: str) -> Operation:
    """An admin's create-or-replace of part of the configuration, under If-Match."""
    return Operation("PUT", path, handler, ADMIN, summary, body=body, if_match=True, responses=PUT_RESPONSES)


OPERATIONS: list[Operation] = [
    Operation("GET", "/lines", list_lines, ADMIN, "Every line and the configuration version", responses=(503,)),
    Operation("GET", "/lines/{line_id}", get_line, ADMIN, "One line", responses=(404, 503)),
    _put("/lines/{line_id}", put_line, "Create or replace a line (validated; the router hot-reloads it)", "LineConfig"),
    Operation(
        "DELETE", "/lines/{line_id}", delete_line, ADMIN, "Remove a line", if_match=True, responses=(400, 404, 412, 428, 503)
    ),
    Operation("GET", "/doctor", doctor, ADMIN, "Setup mistakes of the live configuration (`lines doctor`)", responses=(503,)),
    Operation("GET", "/operators", list_operators, ADMIN, "Every operator with lines, roles and why they see no chats"),
    Operation("GET", "/operators/{operator_id}", get_operator, ADMIN, "One operator", responses=(404,)),
    _put(
        "/operators/{operator_id}",
        put_operator,
        "Create or change an operator; a password is stored as an argon2 hash",
        "OperatorBody",
    ),
    Operation(
        "DELETE",
        "/operators/{operator_id}",
        delete_operator,
        ADMIN,
        "Remove an operator (refused while a queue lists them)",
        if_match=True,
        responses=(400, 404, 412, 428, 503),
    ),
    Operation(
        "GET",
        "/sessions",
        list_sessions,
        STAFF,
        "Sessions, newest first, filtered",
        query=("line", "status", "operator", "channel", "from", "to", "limit"),
        responses=(400, 503),
    ),
    Operation("GET", "/sessions/{session_id}", get_session, STAFF, "One session", responses=(404, 503)),
    Operation("GET", "/sessions/{session_id}/transcript", get_transcript, STAFF, "A session's transcript", responses=(404, 503)),
    Operation(
        "GET",
        "/stats",
        stats,
        STAFF,
        "Per-line and per-operator statistics for a range of whole UTC hours",
        query=("line", "from", "to", "tz"),
        responses=(400, 404, 503),
    ),
]


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        staff = request.app[STAFF_KEY]
        try:
            token = await authenticate(request, staff, op.roles)
            return await op.handler(request, staff, token)
        except Problem as exc:
            return problem_response(exc)
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("api: NATS unavailable", extra={"path": op.path, "error": type(exc).__name__})
            return problem_response(Problem(503, "unavailable", "the message bus did not answer; try again"))

    handle.__name__ = op.handler.__name__
    return handle


def add_api_routes(app: web.Application) -> None:
    from desk.openapi import document

    for op in OPERATIONS:
        app.router.add_route(op.method, PREFIX + op.path, _wrap(op))

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.json_response(document(), headers={"Cache-Control": "no-store"})

    app.router.add_get(PREFIX + "/openapi.json", openapi)
