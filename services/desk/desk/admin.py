"""The admin pages (role admin) and the statistics page (supervisor or admin).

Signed-in with the desk's session cookie; every form carries the CSRF token.
An admin-only account (no open-lines permission, no operator role) may use
these pages although the workspace refuses it, so the desk's own access check
is not applied here - only the role is. Saving goes through
:class:`desk.config.ConfigStore` with the version the page was rendered
from: an edit based on a stale page is refused, never merged silently.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from aiohttp import web
from argon2 import PasswordHasher

from desk import admin_views as views
from desk.api import MIN_PASSWORD, STAFF_KEY, OperatorBody, Problem, Staff, add_api_routes, date_range, operator_problems
from desk.config import ConfigStore, Conflict, lines_toml, operator_view, parse_lines_toml, valid_version
from desk.http import DESK, Authed, Desk, html
from desk.stats import line_stats
from desk.tokens import TokenStore, open_bucket
from openlines.bus import Buckets
from openlines.doctor import diagnose
from openlines.lines import ROLES, ConfigError, LinesFile, OperatorConfig, check
from openlines.runner import Service

log = logging.getLogger("desk.admin")

ADMIN_ROLES = ("admin",)
STATS_ROLES = ("supervisor", "admin")


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


async def _form(request: web.Request, desk: Desk, user: Authed) -> Any:
    form = await request.post()
    if not desk.form_csrf_ok(request, user, form):
        raise web.HTTPForbidden(text="missing or wrong CSRF token; reload the page")
    return form


def _csrf(desk: Desk, user: Authed) -> str:
    return desk.signer.csrf_token(user.session.nonce)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- lines ----------------------------------------------------------------------------------------


async def lines_get(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    snap = await staff.store.snapshot()
    page = views.lines_page(
        user.account,
        _csrf(desk, user),
        text=lines_toml(snap.cfg.lines),
        version=snap.version,
        findings=diagnose(snap.cfg),
        message=request.query.get("saved", "") and "Saved: the router uses the new configuration now.",
    )
    return html(page)


async def lines_post(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    form = await _form(request, desk, user)
    text = str(form.get("toml", ""))
    version = str(form.get("version", ""))
    action = form.get("action")
    csrf = _csrf(desk, user)
    snap = await staff.store.snapshot()

    def again(status: int, **kw: Any) -> web.Response:
        kw.setdefault("findings", [])
        return html(views.lines_page(user.account, csrf, text=text, version=version, **kw), status=status)

    try:
        cfg = LinesFile(operators=snap.cfg.operators, lines=parse_lines_toml(text))
        errors = check(cfg)
    except ConfigError as exc:
        return again(400, errors=list(exc.errors))
    findings = diagnose(cfg)
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
    live = {(f.code, f.key) for f in diagnose(snap.cfg)}
    new = [f for f in findings if f.severity != "info" and (f.code, f.key) not in live]
    if new and form.get("confirm") != _digest(text):
        # Warnings this edit brings must be seen before it is saved: show them and ask once more.
        return again(200, findings=findings, confirm=_digest(text))
    try:
        changes, _ = await staff.store.save(cfg, version, user.operator_id)
    except Conflict:
        return again(409, findings=findings, conflict=stale)
    except ConfigError as exc:
        return again(400, errors=list(exc.errors), findings=findings)
    log.info("lines saved from the admin page", extra={"operator": user.operator_id, "changes": len(changes)})
    raise web.HTTPSeeOther("/admin/lines?saved=1")


# -- operators ------------------------------------------------------------------------------------


async def operators_get(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    snap = await staff.store.snapshot()
    found = diagnose(snap.cfg)
    ops = [operator_view(snap.cfg, op_id, found) for op_id in sorted(snap.cfg.operators)]
    message = "Saved." if request.query.get("saved") else "Removed." if request.query.get("removed") else ""
    return html(views.operators_page(user.account, _csrf(desk, user), operators=ops, version=snap.version, message=message))


async def operator_get(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    snap = await staff.store.snapshot()
    op_id = request.match_info["operator_id"]
    if op_id not in snap.cfg.operators:
        raise web.HTTPNotFound(text="no such operator")
    view = operator_view(snap.cfg, op_id, diagnose(snap.cfg))
    return html(views.operator_page(user.account, _csrf(desk, user), op=view, version=snap.version))


async def _save_operator(request: web.Request, op_id: str | None) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    form = await _form(request, desk, user)
    csrf = _csrf(desk, user)
    new = op_id is None
    op_id = str(form.get("id", "")).strip() if op_id is None else op_id
    version = str(form.get("version", ""))
    password = str(form.get("password", ""))
    body = OperatorBody(
        name=str(form.get("name", "")),
        roles=[str(r) for r in form.getall("roles", [])],
        permissions=[str(p) for p in form.getall("permissions", [])],
        password=password or None,
    )
    snap = await staff.store.snapshot()
    old = snap.cfg.operators.get(op_id)
    errors = operator_problems(body)
    if new and old is not None:
        errors.append(f"operators.{op_id}: an operator with this login exists already")
    if not new and old is None:
        raise web.HTTPNotFound(text="no such operator")
    if op_id == user.operator_id and "admin" not in body.roles:
        errors.append("roles: you cannot take the admin role from yourself (ask another admin)")
    if new and not password:
        errors.append(f"password: a new operator needs a password of at least {MIN_PASSWORD} characters")
    pw_hash = old.password_hash if old is not None else ""
    if not errors and password:
        pw_hash = await staff.hash_password(password)
    updated = OperatorConfig(name=body.name.strip(), password_hash=pw_hash, roles=body.roles, permissions=body.permissions)
    cfg = LinesFile(operators={**snap.cfg.operators, op_id: updated}, lines=snap.cfg.lines)
    if not errors:
        try:
            await staff.store.save(cfg, version, user.operator_id)
        except ConfigError as exc:
            errors = list(exc.errors)
        except Conflict:
            stale = "Someone else changed the configuration since this page was loaded; nothing was saved. Reload and try again."
            errors = [stale]
        else:
            log.info("operator saved from the admin page", extra={"operator": op_id, "by": user.operator_id})
            raise web.HTTPSeeOther("/admin/operators?saved=1")
    found = diagnose(snap.cfg)
    if new:
        ops = [operator_view(snap.cfg, o, found) for o in sorted(snap.cfg.operators)]
        page = views.operators_page(user.account, csrf, operators=ops, version=snap.version, form_errors=errors)
        return html(page, status=400)
    shown = operator_view(snap.cfg, op_id, found) | {"name": body.name, "roles": body.roles, "permissions": body.permissions}
    return html(views.operator_page(user.account, csrf, op=shown, version=snap.version, errors=errors), status=400)


async def operator_create(request: web.Request) -> web.StreamResponse:
    return await _save_operator(request, None)


async def operator_update(request: web.Request) -> web.StreamResponse:
    return await _save_operator(request, request.match_info["operator_id"])


async def operator_delete(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    form = await _form(request, desk, user)
    op_id = request.match_info["operator_id"]
    snap = await staff.store.snapshot()
    if op_id not in snap.cfg.operators:
        raise web.HTTPNotFound(text="no such operator")
    if op_id == user.operator_id:
        yourself = ["you cannot remove your own account (ask another admin)"]
        view = operator_view(snap.cfg, op_id, diagnose(snap.cfg))
        return html(
            views.operator_page(user.account, _csrf(desk, user), op=view, version=snap.version, errors=yourself), status=400
        )
    cfg = LinesFile(operators={k: v for k, v in snap.cfg.operators.items() if k != op_id}, lines=snap.cfg.lines)
    view = operator_view(snap.cfg, op_id, diagnose(snap.cfg))
    try:
        await staff.store.save(cfg, str(form.get("version", "")), user.operator_id)
    except ConfigError as exc:
        page = views.operator_page(user.account, _csrf(desk, user), op=view, version=snap.version, errors=list(exc.errors))
        return html(page, status=400)
    except Conflict:
        conflict = "Someone else changed the configuration since this page was loaded; nothing was removed."
        page = views.operator_page(user.account, _csrf(desk, user), op=view, version=snap.version, errors=[conflict])
        return html(page, status=409)
    log.info("operator removed from the admin page", extra={"operator": op_id, "by": user.operator_id})
    raise web.HTTPSeeOther("/admin/operators?removed=1")


async def roles_get(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, ADMIN_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    snap = await staff.store.snapshot()
    holders = {r: sorted(op_id for op_id, op in snap.cfg.operators.items() if r in op.roles) for r in ROLES}
    return html(views.roles_page(user.account, _csrf(desk, user), holders=holders))


async def admin_home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/admin/lines")


# -- statistics -----------------------------------------------------------------------------------


async def stats_get(request: web.Request) -> web.StreamResponse:
    user = await staff_user(request, STATS_ROLES)
    if isinstance(user, web.Response):
        return user
    desk, staff = request.app[DESK], request.app[STAFF_KEY]
    now = datetime.now(UTC)
    try:
        start, end = (
            date_range(request, now, 7)
            if request.query.get("from") or request.query.get("to")
            else (
                datetime.combine((now - timedelta(days=6)).date(), datetime.min.time(), tzinfo=UTC),
                now,
            )
        )
    except Problem as exc:
        return html(views.denied(user.account, exc.detail), status=400)
    snap = await staff.store.snapshot()
    report = await line_stats(staff.reader.js, start, end, [line.id for line in snap.cfg.lines])
    names = {line.id: line.name for line in snap.cfg.lines}
    last_day = (end - timedelta(microseconds=1)).date()
    page = views.stats_page(
        user.account,
        _csrf(desk, user),
        start=start.date().isoformat(),
        end=last_day.isoformat(),
        rows=[{"line_id": s.line_id, **_row(s)} for s in report.lines.values()],
        names=names,
        complete=report.complete,
    )
    return html(page)


def _row(s: Any) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(s)
    return out


# -- wiring ---------------------------------------------------------------------------------------


async def setup(svc: Service[Any]) -> None:
    """Build what the admin API and pages share and register their routes (after the desk's own)."""
    desk = svc.app[DESK]
    buckets = await Buckets(svc.js).open()
    tokens = TokenStore(await open_bucket(svc.js, svc.settings.replicas))
    svc.app[STAFF_KEY] = Staff(
        reader=desk.reader, store=ConfigStore(svc.js, buckets), tokens=tokens, hasher=PasswordHasher().hash
    )
    add_api_routes(svc.app)
    app = svc.app
    app.router.add_get("/admin", admin_home)
    app.router.add_get("/admin/lines", lines_get)
    app.router.add_post("/admin/lines", lines_post)
    app.router.add_get("/admin/operators", operators_get)
    app.router.add_post("/admin/operators", operator_create)
    app.router.add_get("/admin/operators/{operator_id}", operator_get)
    app.router.add_post("/admin/operators/{operator_id}", operator_update)
    app.router.add_post("/admin/operators/{operator_id}/delete", operator_delete)
    app.router.add_get("/admin/roles", roles_get)
    app.router.add_get("/stats", stats_get)
