"""The admin pages (role admin) and the statistics page (supervisor or admin).

Signed-in with the desk's session cookie; every form carries the CSRF token.
An admin-only account (no open-lines permission, no operator role) may use
these pages although the workspace refuses it, so the desk's own access check
is not applied here - only the role is. Saving goes through
:class:`desk.config.ConfigStore` with the version the page was rendered
from: an edit based on a stale page is refused, never merged silently.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from aiohttp import web
from argon2 import PasswordHasher

from desk import admin_views as views
from desk import lineform
from desk import stats as figures
from desk.api import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    STAFF_KEY,
    OperatorBody,
    Problem,
    Staff,
    add_api_routes,
    date_range,
    operator_problems,
    time_zone,
)
from desk.config import (
    ConfigStore,
    Conflict,
    Snapshot,
    diagnosed,
    lines_toml,
    operator_view,
    parse_lines_toml,
    valid_version,
)
from desk.http import DESK, Authed, Desk, html, redirect
from desk.supervise import overview
from desk.tokens import TokenStore, new_token, open_bucket, parse_duration
from openlines.bus import Buckets
from openlines.lines import ConfigError, LineConfig, LinesFile, OperatorConfig, check
from openlines.roles import ADMIN, ADMIN_ROLES, ROLES, SUPERVISOR_ROLES
from openlines.runner import Service
from openlines.state import OperatorAccount

log = logging.getLogger("desk.admin")

STATS_ROLES = SUPERVISOR_ROLES


async def staff_user(request: web.Request, roles: tuple[str, ...]) -> Authed | web.Response:
    """The signed-in user when they hold one of ``roles``; else the answer to give (sign in / no access)."""
    desk = request.app[DESK]
    user = await desk.authed(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    if not any(role in roles for role in user.account.roles):
        held = ", ".join(user.account.roles) or "none"
        reason = f"This page needs the {' or '.join(roles)} role (your roles: {held}): ask an administrator."
        return html(views.denied(user.account, reason), status=403)
    return user


@dataclass(frozen=True)
class _Page:
    """A request for an admin or statistics page from a user holding the page's role."""

    request: web.Request
    user: Authed
    desk: Desk
    staff: Staff

    @property
    def csrf(self) -> str:
        return self.desk.signer.csrf_token(self.user.session.nonce)

    async def form(self) -> Any:
        form = await self.request.post()
        if not self.desk.form_csrf_ok(self.request, self.user, form):
            raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")
        return form

    def operator_page(
        self, snap: Snapshot, op: dict[str, Any], errors: list[str] | None = None, status: int = 200
    ) -> web.Response:
        page = views.operator_page(
            self.user.account, self.csrf, op=op, version=snap.version, errors=errors, lines=line_choices(snap)
        )
        return html(page, status=status)


PageHandler = Callable[[_Page], Awaitable[web.StreamResponse]]


def line_choices(snap: Snapshot) -> list[tuple[str, str]]:
    """(id, name) of every line, for the queue boxes of the operator forms."""
    return [(line.id, line.name) for line in snap.cfg.lines]


def with_queues(lines: list[LineConfig], op_id: str, wanted: set[str]) -> list[LineConfig]:
    """The lines with ``op_id`` in the queue of exactly the ``wanted`` ones (joining at the end, order kept)."""
    out = []
    for line in lines:
        members = [o for o in line.queue.operators if o != op_id]
        if line.id in wanted:
            members = line.queue.operators if op_id in line.queue.operators else [*members, op_id]
        if members != line.queue.operators:
            line = msgspec.structs.replace(line, queue=msgspec.structs.replace(line.queue, operators=members))
        out.append(line)
    return out


def _staff_page(roles: tuple[str, ...]) -> Callable[[PageHandler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Makes ``page`` a request handler that answers only users holding one of ``roles`` (see :func:`staff_user`)."""

    def wrap(page: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(page)
        async def handler(request: web.Request) -> web.StreamResponse:
            user = await staff_user(request, roles)
            if isinstance(user, web.Response):
                return user
            return await page(_Page(request, user, request.app[DESK], request.app[STAFF_KEY]))

        return handler

    return wrap


def account_of(op_id: str, op: OperatorConfig) -> OperatorAccount:
    """The account record ``openlines.apply`` writes for this operator."""
    return OperatorAccount(id=op_id, name=op.name, password_hash=op.password_hash, roles=op.roles, permissions=op.permissions)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- lines ----------------------------------------------------------------------------------------


@_staff_page(ADMIN_ROLES)
async def lines_get(p: _Page) -> web.StreamResponse:
    snap = await p.staff.store.snapshot()
    page = views.lines_page(
        p.user.account,
        p.csrf,
        text=lines_toml(snap.cfg.lines),
        lines=line_choices(snap),
        version=snap.version,
        findings=await diagnosed(snap.cfg),
        message=p.request.query.get("saved", "") and "Saved: the router uses the new configuration now.",
    )
    return html(page)


@_staff_page(ADMIN_ROLES)
async def lines_post(p: _Page) -> web.StreamResponse:
    form = await p.form()
    text = str(form.get("toml", ""))
    version = str(form.get("version", ""))
    action = form.get("action")
    csrf = p.csrf
    snap = await p.staff.store.snapshot()

    def again(status: int, **kw: Any) -> web.Response:
        kw.setdefault("findings", [])
        page = views.lines_page(p.user.account, csrf, text=text, version=version, lines=line_choices(snap), **kw)
        return html(page, status=status)

    try:
        cfg = LinesFile(operators=snap.cfg.operators, lines=parse_lines_toml(text))
        errors = check(cfg)
    except ConfigError as exc:
        return again(400, errors=list(exc.errors))
    findings = await diagnosed(cfg)
    if errors:
        return again(400, errors=errors, findings=findings)
    if action != "save":
        return again(200, findings=findings, message="Valid. The doctor's findings are below; nothing is saved yet.")
    stale = (
        "Someone else changed the configuration since this page was loaded; nothing was saved. "
        "Copy your edit, reload the page and apply it again."
    )
    if not valid_version(version) or version != snap.version:
        return again(409, findings=findings, conflict=stale)
    live = {(f.code, f.key) for f in await diagnosed(snap.cfg)}
    new = [f for f in findings if f.severity != "info" and (f.code, f.key) not in live]
    if new and form.get("confirm") != _digest(text):
        # Warnings this edit brings must be seen before it is saved: show them and ask once more.
        return again(200, findings=findings, confirm=_digest(text))
    try:
        changes, _ = await p.staff.store.save(cfg, version, p.user.operator_id)
    except Conflict:
        return again(409, findings=findings, conflict=stale)
    except ConfigError as exc:
        return again(400, errors=list(exc.errors), findings=findings)
    log.info("lines saved from the admin page", extra={"operator": p.user.operator_id, "changes": len(changes)})
    raise web.HTTPSeeOther("/admin/lines?saved=1")


# -- one line as a form ---------------------------------------------------------------------------


def _form_context(snap: Snapshot, invalid: set[str] | None = None) -> lineform.Context:
    return lineform.Context(
        operators={k: op.name for k, op in snap.cfg.operators.items()},
        lines=line_choices(snap),
        invalid=invalid or set(),
    )


@_staff_page(ADMIN_ROLES)
async def line_form_get(p: _Page) -> web.StreamResponse:
    snap = await p.staff.store.snapshot()
    line_id = p.request.match_info.get("line_id")
    line = snap.line(line_id) if line_id else LineConfig(id="", name="")
    if line is None:
        raise web.HTTPNotFound(text="no such line")
    findings = [f for f in await diagnosed(snap.cfg) if f.line == line.id] if line_id else []
    page = views.line_form_page(
        p.user.account,
        p.csrf,
        line_id=line_id,
        name=line.name,
        fields=lineform.render(line, _form_context(snap), new=line_id is None),
        version=snap.version,
        findings=findings,
        message="Saved." if p.request.query.get("saved") else "",
    )
    return html(page)


@_staff_page(ADMIN_ROLES)
async def line_form_post(p: _Page) -> web.StreamResponse:
    form = await p.form()
    version = str(form.get("version", ""))
    line_id = p.request.match_info.get("line_id")
    snap = await p.staff.store.snapshot()
    base = snap.line(line_id) if line_id else None
    if line_id and base is None:
        raise web.HTTPNotFound(text="no such line")
    doc, errors = lineform.read(lineform.FormValues(form.getall), base)
    full = None
    if not errors:
        full, errors = lineform.validate(doc, snap.cfg, line_id)
    the_id = line_id or str(doc.get("id", ""))
    findings = [f for f in await diagnosed(full) if f.line == the_id] if full is not None else []

    def again(status: int, **kw: Any) -> web.Response:
        page = views.line_form_page(
            p.user.account,
            p.csrf,
            line_id=line_id,
            name=str(doc.get("name", "")),
            fields=lineform.render(doc, _form_context(snap, lineform.invalid_paths(kw.get("errors", []))), new=line_id is None),
            version=version,
            findings=findings,
            **kw,
        )
        return html(page, status=status)

    if errors or full is None:
        return again(400, errors=errors)
    if form.get("action") != "save":
        return again(200, message="Valid. The doctor's findings for this line are below; nothing is saved yet.")
    stale = "Someone else changed the configuration since this page was loaded; nothing was saved. Reload and apply it again."
    if not valid_version(version) or version != snap.version:
        return again(409, conflict=stale)
    live = {(f.code, f.key) for f in await diagnosed(snap.cfg)}
    fresh = [f for f in findings if f.severity != "info" and (f.code, f.key) not in live]
    digest = _digest(msgspec.json.encode(doc).decode())
    if fresh and form.get("confirm") != digest:
        return again(200, confirm=digest)
    try:
        await p.staff.store.save(full, version, p.user.operator_id)
    except Conflict:
        return again(409, conflict=stale)
    except ConfigError as exc:
        return again(400, errors=list(exc.errors))
    log.info("line saved from its form", extra={"line": the_id, "by": p.user.operator_id})
    raise web.HTTPSeeOther(f"/admin/lines/form/{the_id}?saved=1")


# -- operators ------------------------------------------------------------------------------------


@_staff_page(ADMIN_ROLES)
async def operators_get(p: _Page) -> web.StreamResponse:
    snap = await p.staff.store.snapshot()
    found = await diagnosed(snap.cfg)
    ops = [operator_view(snap.cfg, op_id, found) for op_id in sorted(snap.cfg.operators)]
    message = "Saved." if p.request.query.get("saved") else "Removed." if p.request.query.get("removed") else ""
    page = views.operators_page(
        p.user.account, p.csrf, operators=ops, version=snap.version, message=message, lines=line_choices(snap)
    )
    return html(page)


@_staff_page(ADMIN_ROLES)
async def operator_get(p: _Page) -> web.StreamResponse:
    snap = await p.staff.store.snapshot()
    op_id = p.request.match_info["operator_id"]
    if op_id not in snap.cfg.operators:
        raise web.HTTPNotFound(text="no such operator")
    return p.operator_page(snap, operator_view(snap.cfg, op_id, await diagnosed(snap.cfg)))


async def _save_operator(p: _Page, op_id: str | None) -> web.StreamResponse:
    form = await p.form()
    csrf = p.csrf
    new = op_id is None
    op_id = str(form.get("id", "")).strip() if op_id is None else op_id
    version = str(form.get("version", ""))
    password = str(form.get("password", ""))
    body = OperatorBody(
        name=str(form.get("name", "")),
        roles=[str(r) for r in form.getall("roles", [])],
        permissions=[str(perm) for perm in form.getall("permissions", [])],
        password=password or None,
    )
    snap = await p.staff.store.snapshot()
    old = snap.cfg.operators.get(op_id)
    errors = operator_problems(body)
    if new and old is not None:
        errors.append(f"operators.{op_id}: an operator with this login exists already")
    if not new and old is None:
        raise web.HTTPNotFound(text="no such operator")
    if op_id == p.user.operator_id and ADMIN not in body.roles:
        errors.append("roles: you cannot take the admin role from yourself (ask another admin)")
    if new and not password:
        errors.append(f"password: a new operator needs a password of at least {MIN_PASSWORD} characters")
    pw_hash = old.password_hash if old is not None else ""
    if not errors and password:
        pw_hash = await p.staff.hash_password(password)
    updated = OperatorConfig(name=body.name.strip(), password_hash=pw_hash, roles=body.roles, permissions=body.permissions)
    lines = snap.cfg.lines
    queues = {str(v) for v in form.getall("lines", [])}
    if form.get("lines-shown"):  # the form offered the queue boxes: what is ticked is what they are in
        unknown = sorted(queues - {line.id for line in lines})
        if unknown:
            errors.append(f"lines: no such line {', '.join(map(repr, unknown))} (reload the page)")
        lines = with_queues(lines, op_id, queues)
    cfg = LinesFile(operators={**snap.cfg.operators, op_id: updated}, lines=lines)
    if not errors:
        try:
            await p.staff.store.save(cfg, version, p.user.operator_id)
        except ConfigError as exc:
            errors = list(exc.errors)
        except Conflict:
            stale = "Someone else changed the configuration since this page was loaded; nothing was saved. Reload and try again."
            errors = [stale]
        else:
            log.info("operator saved from the admin page", extra={"operator": op_id, "by": p.user.operator_id})
            done = redirect("/admin/operators?saved=1")
            if op_id == p.user.operator_id:
                # An admin editing their own account: its other sessions end (the stamp changed), this one goes on.
                p.desk.carry_over(p.request, done, p.user, account_of(op_id, updated))
            return done
    found = await diagnosed(snap.cfg)
    if new:
        ops = [operator_view(snap.cfg, o, found) for o in sorted(snap.cfg.operators)]
        entered = {"id": op_id, "name": body.name, "roles": body.roles, "permissions": body.permissions, "lines": sorted(queues)}
        page = views.operators_page(
            p.user.account,
            csrf,
            operators=ops,
            version=snap.version,
            form_errors=errors,
            entered=entered,
            lines=line_choices(snap),
        )
        return html(page, status=400)
    view = operator_view(snap.cfg, op_id, found)
    shown = view | {
        "name": body.name,
        "roles": body.roles,
        "permissions": body.permissions,
        "lines": sorted(queues) if form.get("lines-shown") else view["lines"],
    }
    return p.operator_page(snap, shown, errors, status=400)


@_staff_page(ADMIN_ROLES)
async def operator_create(p: _Page) -> web.StreamResponse:
    return await _save_operator(p, None)


@_staff_page(ADMIN_ROLES)
async def operator_update(p: _Page) -> web.StreamResponse:
    return await _save_operator(p, p.request.match_info["operator_id"])


@_staff_page(ADMIN_ROLES)
async def operator_delete(p: _Page) -> web.StreamResponse:
    form = await p.form()
    op_id = p.request.match_info["operator_id"]
    snap = await p.staff.store.snapshot()
    if op_id not in snap.cfg.operators:
        raise web.HTTPNotFound(text="no such operator")
    view = operator_view(snap.cfg, op_id, await diagnosed(snap.cfg))
    if op_id == p.user.operator_id:
        return p.operator_page(snap, view, ["you cannot remove your own account (ask another admin)"], status=400)
    cfg = LinesFile(operators={k: v for k, v in snap.cfg.operators.items() if k != op_id}, lines=snap.cfg.lines)
    try:
        await p.staff.store.save(cfg, str(form.get("version", "")), p.user.operator_id)
    except ConfigError as exc:
        return p.operator_page(snap, view, list(exc.errors), status=400)
    except Conflict:
        conflict = "Someone else changed the configuration since this page was loaded; nothing was removed."
        return p.operator_page(snap, view, [conflict], status=409)
    log.info("operator removed from the admin page", extra={"operator": op_id, "by": p.user.operator_id})
    raise web.HTTPSeeOther("/admin/operators?removed=1")


@_staff_page(ADMIN_ROLES)
async def roles_get(p: _Page) -> web.StreamResponse:
    snap = await p.staff.store.snapshot()
    holders = {r: sorted(op_id for op_id, op in snap.cfg.operators.items() if r in op.roles) for r in ROLES}
    return html(views.roles_page(p.user.account, p.csrf, holders=holders))


# -- quick answers --------------------------------------------------------------------------------


def editable_lines(snap: Snapshot, who: OperatorAccount) -> list[LineConfig]:
    """The lines whose quick answers this account may change: every line for an admin; for a
    supervisor, the lines whose queue lists them."""
    if ADMIN in who.roles:
        return list(snap.cfg.lines)
    return [line for line in snap.cfg.lines if who.id in line.queue.operators]


@_staff_page(STATS_ROLES)
async def quick_answers_get(p: _Page) -> web.StreamResponse:
    snap = await p.staff.store.snapshot()
    message = "Saved." if p.request.query.get("saved") else ""
    page = views.quick_answers_page(
        p.user.account, p.csrf, lines=editable_lines(snap, p.user.account), version=snap.version, message=message
    )
    return html(page)


@_staff_page(STATS_ROLES)
async def quick_answers_post(p: _Page) -> web.StreamResponse:
    form = await p.form()
    line_id = p.request.match_info["line_id"]
    snap = await p.staff.store.snapshot()
    mine = editable_lines(snap, p.user.account)
    line = next((x for x in mine if x.id == line_id), None)
    if line is None:
        if snap.line(line_id) is None:
            raise web.HTTPNotFound(text="no such line")
        raise web.HTTPForbidden(text="a supervisor changes the quick answers of the lines whose queue lists them")
    # One box per answer; an emptied box drops that answer, the last (empty) box adds one.
    answers = [str(v).replace("\r\n", "\n").strip() for v in form.getall("answer", [])]
    answers = [a for a in answers if a]
    edited = msgspec.structs.replace(line, quick_answers=answers)
    cfg = LinesFile(operators=snap.cfg.operators, lines=[edited if x.id == line_id else x for x in snap.cfg.lines])
    errors: list[str] = []
    try:
        await p.staff.store.save(cfg, str(form.get("version", "")), p.user.operator_id)
    except ConfigError as exc:
        errors = list(exc.errors)
    except Conflict:
        errors = ["Someone else changed the configuration since this page was loaded; nothing was saved. Reload and try again."]
    if not errors:
        log.info("quick answers saved", extra={"line": line_id, "by": p.user.operator_id, "answers": len(answers)})
        raise web.HTTPSeeOther(f"/quick-answers?saved=1#line-{line_id}")
    shown = [edited if x.id == line_id else x for x in mine]
    page = views.quick_answers_page(p.user.account, p.csrf, lines=shown, version=snap.version, errors={line_id: errors})
    return html(page, status=409 if errors[0].startswith("Someone else") else 400)


# -- API tokens -----------------------------------------------------------------------------------


@_staff_page(ADMIN_ROLES)
async def tokens_get(p: _Page) -> web.StreamResponse:
    message = "Revoked." if p.request.query.get("revoked") else ""
    return html(views.tokens_page(p.user.account, p.csrf, tokens=await p.staff.tokens.all(), now=_now(), message=message))


@_staff_page(ADMIN_ROLES)
async def token_create(p: _Page) -> web.StreamResponse:
    form = await p.form()
    name = str(form.get("name", "")).strip()
    role = str(form.get("role", ""))
    expires = str(form.get("expires_in", "")).strip()
    once = str(form.get("form", ""))[:32]
    entered = {"name": name, "role": role, "expires_in": expires}
    tokens = await p.staff.tokens.all()
    if once and any(t.form == once for t in tokens):
        again = "This form was sent before and its token created then (shown once). Revoke it below if it was not copied."
        return html(views.tokens_page(p.user.account, p.csrf, tokens=tokens, now=_now(), message=again))
    try:
        token, record = new_token(name, role, parse_duration(expires) if expires else None)
        record = msgspec.structs.replace(record, form=once)
    except ValueError as exc:
        page = views.tokens_page(p.user.account, p.csrf, tokens=tokens, now=_now(), errors=[str(exc)], entered=entered)
        return html(page, status=400)
    await p.staff.tokens.add(record)
    log.info("API token created from the admin page", extra={"token": record.id, "role": role, "by": p.user.operator_id})
    # Shown in this answer only: the desk keeps the secret's digest, never the secret.
    page = views.tokens_page(p.user.account, p.csrf, tokens=await p.staff.tokens.all(), now=_now(), created=(record.id, token))
    resp = html(page)
    resp.headers["Cache-Control"] = "no-store"
    return resp


@_staff_page(ADMIN_ROLES)
async def token_revoke(p: _Page) -> web.StreamResponse:
    await p.form()
    token_id = p.request.match_info["token_id"]
    if not await p.staff.tokens.revoke(token_id):
        raise web.HTTPNotFound(text="no such token")
    log.info("API token revoked from the admin page", extra={"token": token_id, "by": p.user.operator_id})
    raise web.HTTPSeeOther("/admin/tokens?revoked=1")


def _now() -> datetime:
    return datetime.now(UTC)


async def admin_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/admin/lines")


# -- your own password ----------------------------------------------------------------------------

PASSWORD_PAGE = "/account/password"


async def password_get(request: web.Request) -> web.StreamResponse:
    desk = request.app[DESK]
    user = await desk.authed(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    message = "Password changed. Your other sessions have ended." if request.query.get("changed") else ""
    return html(views.password_page(user.account, desk.signer.csrf_token(user.session.nonce), message=message))


async def password_post(request: web.Request) -> web.StreamResponse:
    """Any signed-in account changes its own password; the other sessions of the account end, this one goes on.

    The current password is asked (a session left open on a shared computer must not be enough to take the
    account over) and wrong answers count against the sign-in limits of this login and address.
    """
    desk = request.app[DESK]
    staff = request.app[STAFF_KEY]
    user = await desk.authed(request)
    if user is None:
        raise web.HTTPSeeOther("/login")
    form = await request.post()
    csrf = desk.signer.csrf_token(user.session.nonce)
    if not desk.form_csrf_ok(request, user, form):
        raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")

    def again(status: int, error: str) -> web.Response:
        return html(views.password_page(user.account, csrf, errors=[error]), status=status)

    current, new, repeated = (str(form.get(k, "")) for k in ("current", "new", "again"))
    limiter, _ = await desk.guards()
    address = desk.client_address(request)
    wait = (await limiter.check(user.operator_id, address, time.time())).retry_after
    if wait:
        return again(429, f"Too many wrong passwords. Try again in {max(1, -(-wait // 60))} minutes.")
    checked = current[:MAX_PASSWORD] if len(current) <= MAX_PASSWORD else ""
    ok = await asyncio.get_running_loop().run_in_executor(None, desk.passwords.verify, user.account.password_hash, checked)
    if not ok:
        await limiter.failed(user.operator_id, address, time.time())
        return again(400, "The current password is wrong.")
    if not MIN_PASSWORD <= len(new) <= MAX_PASSWORD:
        return again(400, f"The new password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters.")
    if new != repeated:
        return again(400, "The two new passwords differ.")
    if new == current:
        return again(400, "The new password is the current one.")
    snap = await staff.store.snapshot()
    old = snap.cfg.operators.get(user.operator_id)
    if old is None:
        raise web.HTTPSeeOther("/login")
    updated = msgspec.structs.replace(old, password_hash=await staff.hash_password(new))
    cfg = LinesFile(operators={**snap.cfg.operators, user.operator_id: updated}, lines=snap.cfg.lines)
    try:
        await staff.store.save(cfg, snap.version, user.operator_id)
    except (Conflict, ConfigError):
        return again(409, "The configuration changed at this very moment; nothing was saved. Please try again.")
    log.info("password changed by its operator", extra={"operator": user.operator_id})
    done = redirect(f"{PASSWORD_PAGE}?changed=1")
    desk.carry_over(request, done, user, account_of(user.operator_id, updated))
    return done


# -- statistics -----------------------------------------------------------------------------------


def visible_lines(snap: Snapshot, who: OperatorAccount) -> list[LineConfig]:
    """The lines whose statistics and wallboard this account may see: every line for an admin; for a
    supervisor, the lines whose queue lists them (as for quick answers)."""
    return editable_lines(snap, who)


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _chosen_lines(p: _Page, snap: Snapshot, line_id: str) -> list[LineConfig]:
    """The lines asked for (one, or every visible one); refused when the line is not the user's to see."""
    mine = visible_lines(snap, p.user.account)
    if not line_id:
        return mine
    if snap.line(line_id) is None:
        raise _Refused(404, f"There is no line {line_id!r}.")
    chosen = [x for x in mine if x.id == line_id]
    if not chosen:
        raise _Refused(403, f"A supervisor sees the statistics of the lines whose queue lists them; {line_id!r} does not.")
    return chosen


def _zone_of(lines: list[LineConfig]) -> str:
    """The time zone the lines share (their business hours'), or UTC when they differ."""
    zones = {x.hours.timezone for x in lines}
    return zones.pop() if len(zones) == 1 else "UTC"


def _today(tz: tzinfo, now: datetime, days: int) -> tuple[datetime, datetime]:
    """The last ``days`` whole days in ``tz``, today included, as UTC instants."""
    today = now.astimezone(tz).date()
    start = datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), tzinfo=tz)
    end = datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


async def _figures(p: _Page) -> tuple[datetime, datetime, ZoneInfo, list[figures.LineFigures], int]:
    now = datetime.now(UTC)
    q = p.request.query
    snap = await p.staff.store.snapshot()
    lines = _chosen_lines(p, snap, q.get("line", ""))
    tz = time_zone(p.request, _zone_of(lines))
    start, end = date_range(p.request, now, 7, tz) if q.get("from") or q.get("to") else _today(tz, now, 7)
    names = {x.id: x.name for x in snap.cfg.lines}
    ops = {op_id: op.name for op_id, op in snap.cfg.operators.items()}
    found, behind = await figures.report(p.staff.stats, [x.id for x in lines], start, end, names, ops, tz)
    return start, end, tz, found, behind


@_staff_page(STATS_ROLES)
async def stats_get(p: _Page) -> web.StreamResponse:
    try:
        start, end, tz, found, behind = await _figures(p)
    except Problem as exc:
        return html(views.denied(p.user.account, exc.detail), status=400)
    except _Refused as exc:
        return html(views.denied(p.user.account, exc.reason), status=exc.status)
    last_day = (end - timedelta(microseconds=1)).astimezone(tz).date()
    page = views.stats_page(
        p.user.account,
        p.csrf,
        start=start.astimezone(tz).date().isoformat(),
        end=last_day.isoformat(),
        tz=tz.key,
        line=p.request.query.get("line", ""),
        lines=[msgspec.to_builtins(f) for f in found],
        behind=behind,
    )
    return html(page)


@_staff_page(STATS_ROLES)
async def stats_csv(p: _Page) -> web.StreamResponse:
    try:
        start, end, tz, found, _behind = await _figures(p)
    except Problem as exc:
        return web.Response(status=400, text=exc.detail)
    except _Refused as exc:
        return web.Response(status=exc.status, text=exc.reason)
    first, last = start.astimezone(tz).date(), (end - timedelta(microseconds=1)).astimezone(tz).date()
    name = f"openlines-stats-{first.isoformat()}-{last.isoformat()}.csv"
    return web.Response(
        text=views.stats_csv(found),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


async def _wallboard_line(p: _Page) -> LineConfig:
    snap = await p.staff.store.snapshot()
    return _chosen_lines(p, snap, p.request.match_info["line_id"])[0]


@_staff_page(STATS_ROLES)
async def wallboard_get(p: _Page) -> web.StreamResponse:
    try:
        line = await _wallboard_line(p)
    except _Refused as exc:
        return html(views.denied(p.user.account, exc.reason), status=exc.status)
    return html(views.wallboard_page(p.user.account, p.csrf, line_id=line.id, name=line.name))


@_staff_page(STATS_ROLES)
async def wallboard_live(p: _Page) -> web.StreamResponse:
    """What the wallboard shows now: the line's queue and operators (live KV) and today's figures (aggregates)."""
    try:
        line = await _wallboard_line(p)
    except _Refused as exc:
        code = "forbidden" if exc.status == 403 else "not_found"
        return web.json_response({"error": code, "detail": exc.reason}, status=exc.status)
    now = time.time()
    live = next((x for x in (await overview(p.staff.reader, now))["lines"] if x["id"] == line.id), None)
    waiting = live["waiting"] if live else []
    operators = live["operators"] if live else []
    in_queue = [o for o in operators if o["in_queue"]]
    try:
        tz = ZoneInfo(line.hours.timezone)  # validated with the configuration
    except (ValueError, OSError, ZoneInfoNotFoundError):
        tz = ZoneInfo("UTC")
    start, end = _today(tz, datetime.fromtimestamp(now, UTC), 1)
    today, behind = await figures.report(p.staff.stats, [line.id], start, end, tz=tz)
    t = today[0]
    body = {
        "line_id": line.id,
        "name": line.name,
        "at": now,
        "waiting": len(waiting),
        "longest_wait_seconds": max((w["wait_seconds"] for w in waiting), default=0),
        "online": len([o for o in in_queue if o["status"] == "online"]),
        "busy": len([o for o in in_queue if o["status"] == "online" and o["load"] > 0]),
        "away": len([o for o in in_queue if o["status"] == "away"]),
        "offline": len([o for o in in_queue if o["status"] == "offline"]),
        "operators": [
            {"id": o["id"], "name": o["name"], "status": o["status"], "load": o["load"], "max_chats": o["max_chats"]}
            for o in in_queue
        ],
        "today": {
            "sessions": t.sessions,
            "answered": t.answered,
            "missed": t.missed,
            "first_response_median_seconds": t.first_response.median_seconds,
        },
        "behind": behind,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


# -- wiring ---------------------------------------------------------------------------------------


async def setup(svc: Service[Any]) -> None:
    """Build what the admin API and pages share and register their routes (after the desk's own)."""
    desk = svc.app[DESK]
    buckets = await Buckets(svc.js).open()
    tokens = TokenStore(svc.js, await open_bucket(svc.js, svc.settings.replicas))
    # Statistics are folded in as events arrive; every replica helps, one event at a time (ADR 019).
    aggregator = figures.Aggregator(svc.js, svc.settings.replicas)
    await aggregator.open()
    svc.spawn(aggregator.run(), "desk-stats")
    svc.on_stop(aggregator.close)
    svc.app[STAFF_KEY] = Staff(
        reader=desk.reader, store=ConfigStore(svc.js, buckets), tokens=tokens, hasher=PasswordHasher().hash, stats=aggregator
    )
    add_api_routes(svc.app)
    app = svc.app
    app.router.add_get("/admin", admin_home)
    app.router.add_get("/admin/lines", lines_get)
    app.router.add_post("/admin/lines", lines_post)
    app.router.add_get("/admin/lines/form", line_form_get)
    app.router.add_post("/admin/lines/form", line_form_post)
    app.router.add_get("/admin/lines/form/{line_id}", line_form_get)
    app.router.add_post("/admin/lines/form/{line_id}", line_form_post)
    app.router.add_get("/admin/operators", operators_get)
    app.router.add_post("/admin/operators", operator_create)
    app.router.add_get("/admin/operators/{operator_id}", operator_get)
    app.router.add_post("/admin/operators/{operator_id}", operator_update)
    app.router.add_post("/admin/operators/{operator_id}/delete", operator_delete)
    app.router.add_get("/admin/roles", roles_get)
    app.router.add_get("/quick-answers", quick_answers_get)
    app.router.add_post("/quick-answers/{line_id}", quick_answers_post)
    app.router.add_get("/admin/tokens", tokens_get)
    app.router.add_post("/admin/tokens", token_create)
    app.router.add_post("/admin/tokens/{token_id}/revoke", token_revoke)
    app.router.add_get("/stats", stats_get)
    app.router.add_get("/stats.csv", stats_csv)
    app.router.add_get("/stats/wallboard/{line_id}", wallboard_get)
    app.router.add_get("/stats/wallboard/{line_id}/live", wallboard_live)
    app.router.add_get(PASSWORD_PAGE, password_get)
    app.router.add_post(PASSWORD_PAGE, password_post)
