"""The admin and statistics pages. Plain templates: every value from outside goes through ``escape``."""

from __future__ import annotations

import csv
import io
import json
import secrets
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

from desk.auth import CSRF_FIELD, nav_links
from desk.tokens import TOKEN_ROLES, ApiToken
from openlines.doctor import Finding
from openlines.lines import PERMISSION_OPENLINES, LineConfig
from openlines.roles import ROLES
from openlines.state import OperatorAccount

ROLE_TEXT = {
    "admin": "Configures lines, operators and roles (these pages and the API); may open the supervisor view and statistics.",
    "supervisor": "Watches every line live, intercepts chats, reads statistics; answers chats like an operator.",
    "operator": "Answers the chats of the lines whose queue lists them.",
}


def _shell(title: str, who: OperatorAccount, csrf: str, current: str, main: str, head: str = "") -> str:
    links = nav_links(who)
    here = ' aria-current="page"'
    nav = "".join(
        f'<a href="{href}" data-testid="{tid}"{here if href == current else ""}>{label}</a>' for href, label, tid in links
    )
    mine = here if current == "/account/password" else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · openlines desk</title>
<link rel="stylesheet" href="/static/desk.css">
<link rel="stylesheet" href="/static/admin.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
{head}</head>
<body class="subpage admin">
<header class="topbar">
  <div class="brand">openlines <span>desk</span></div>
  <nav class="nav" aria-label="Pages">{nav}</nav>
  <div class="spacer"></div>
  <span class="me" data-testid="operator-name">{escape(who.name)}</span>
  <a class="account" href="/account/password" data-testid="nav-password"{mine}>Password</a>
  <form method="post" action="/logout" class="logout">
    <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
    <button type="submit" data-testid="logout">Sign out</button>
  </form>
</header>
<main class="page">
{main}
</main>
</body>
</html>
"""


def _notice(kind: str, text: str, testid: str) -> str:
    return f'<p class="notice {kind}" role="{"alert" if kind == "error" else "status"}" data-testid="{testid}">{escape(text)}</p>'


def _errors(errors: list[str]) -> str:
    if not errors:
        return ""
    items = "".join(f'<li data-testid="config-error">{escape(e)}</li>' for e in errors)
    return (
        f'<div class="notice error" role="alert"><strong>Not saved: the configuration is invalid.</strong><ul>{items}</ul></div>'
    )


def findings_html(findings: list[Finding], *, title: str = "Doctor") -> str:
    if not findings:
        none = '<p class="muted">No findings.</p>'
        return f'<section class="findings" data-testid="findings"><h2>{escape(title)}</h2>{none}</section>'
    rows = "".join(
        f'<li class="finding {escape(f.severity)}" data-testid="finding" data-code="{escape(f.code)}">'
        f'<span class="sev">{escape(f.severity)}</span> <code>{escape(f.key)}</code> '
        f'<span class="problem">{escape(f.problem)}</span><br><span class="fix">Fix: {escape(f.fix)}</span></li>'
        for f in findings
    )
    return f'<section class="findings" data-testid="findings"><h2>{escape(title)}</h2><ul>{rows}</ul></section>'


def lines_page(
    who: OperatorAccount,
    csrf: str,
    *,
    text: str,
    lines: list[tuple[str, str]] | None = None,
    version: str,
    findings: list[Finding],
    errors: list[str] | None = None,
    message: str = "",
    conflict: str = "",
    confirm: str = "",
) -> str:
    notices = ""
    if message:
        notices += _notice("ok", message, "admin-message")
    if conflict:
        notices += _notice("error", conflict, "admin-conflict")
    notices += _errors(errors or [])
    confirm_html = ""
    if confirm:
        confirm_html = (
            f'<input type="hidden" name="confirm" value="{escape(confirm)}">'
            '<p class="notice warn" data-testid="confirm-note">This change brings new doctor findings (below). '
            "Save anyway, or change it and check again.</p>"
        )
    save_label = "Save anyway" if confirm else "Save"
    forms = "".join(
        f'<li><a href="/admin/lines/form/{escape(i)}" data-testid="lf-edit" data-line="{escape(i)}">{escape(n)}</a> '
        f'<span class="muted">({escape(i)})</span></li>'
        for i, n in lines or []
    )
    main = f"""<h1>Lines</h1>
<p>As forms: <ul class="lf-list" data-testid="lf-lines">{forms}
<li><a href="/admin/lines/form" data-testid="lf-new">New line…</a></li></ul></p>
<p class="muted">The whole line configuration as TOML (every key: docs/lines.md). Operators are edited on the
<a href="/admin/operators">Operators</a> page.
Saving validates it, runs the doctor and makes it live: the router reloads at once.</p>
{notices}
<form method="post" action="/admin/lines" class="editor" data-testid="lines-form">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <input type="hidden" name="version" value="{escape(version)}" data-testid="config-version">
  <textarea name="toml" rows="30" spellcheck="false" data-testid="lines-toml" aria-label="Lines TOML">{escape(text)}</textarea>
  {confirm_html}
  <div class="actions">
    <button type="submit" name="action" value="check" data-testid="lines-check">Check</button>
    <button type="submit" name="action" value="save" class="primary" data-testid="lines-save">{save_label}</button>
  </div>
</form>
{findings_html(findings)}"""
    return _shell("Lines", who, csrf, "/admin/lines", main)


def line_form_page(
    who: OperatorAccount,
    csrf: str,
    *,
    line_id: str | None,
    name: str,
    fields: str,
    version: str,
    findings: list[Finding],
    errors: list[str] | None = None,
    message: str = "",
    conflict: str = "",
    confirm: str = "",
) -> str:
    """One line's settings as a form (``fields`` from desk.lineform), beside the TOML editor."""
    notices = _notice("ok", message, "admin-message") if message else ""
    notices += _notice("error", conflict, "admin-conflict") if conflict else ""
    notices += _errors(errors or [])
    confirm_html = ""
    if confirm:
        confirm_html = (
            f'<input type="hidden" name="confirm" value="{escape(confirm)}">'
            '<p class="notice warn" data-testid="confirm-note">This change brings new doctor findings (below). '
            "Save anyway, or change it and check again.</p>"
        )
    save_label = "Save anyway" if confirm else "Save"
    action = f"/admin/lines/form/{escape(line_id)}" if line_id else "/admin/lines/form"
    title = f"Line {name or line_id}" if line_id else "New line"
    main = f"""<h1>{escape(title)}</h1>
<p class="muted">Every setting of the line (docs/lines.md explains each key). The same configuration as the
<a href="/admin/lines" data-testid="lf-toml-link">TOML editor</a>: both save under the same concurrent-edit guard.</p>
{notices}
<form method="post" action="{action}" class="line-form" data-testid="line-form">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <input type="hidden" name="version" value="{escape(version)}">
  {fields}
  {confirm_html}
  <div class="actions">
    <button type="submit" name="action" value="check" data-testid="lf-check">Check</button>
    <button type="submit" name="action" value="save" class="primary" data-testid="lf-save">{save_label}</button>
  </div>
</form>
{findings_html(findings)}
<script src="/static/lineform.js" defer></script>"""
    return _shell(title, who, csrf, "/admin/lines", main)


def _reasons(op: dict[str, Any]) -> str:
    if not op["takes_chats"]:
        return '<span class="muted" data-testid="operator-no-chats-expected">takes no chats (not an operator)</span>'
    if not op["no_chats"]:
        return '<span class="ok" data-testid="operator-sees-chats">sees the chats of its lines</span>'
    items = "".join(f"<li>{escape(r)}</li>" for r in op["no_chats"])
    return f'<div class="why" data-testid="operator-why"><strong>Sees no chats:</strong><ul>{items}</ul></div>'


NO_PASSWORD = '<span class="warn">no</span>'


def operators_page(
    who: OperatorAccount,
    csrf: str,
    *,
    operators: list[dict[str, Any]],
    version: str,
    message: str = "",
    form_errors: list[str] | None = None,
    entered: dict[str, Any] | None = None,
    lines: list[tuple[str, str]] | None = None,
) -> str:
    """``entered``: what a refused "New operator" form held (login, name, roles, permissions, lines), shown again."""
    rows = "".join(
        f'<tr data-testid="operator-row" data-operator="{escape(op["id"])}">'
        f'<td><a href="/admin/operators/{escape(op["id"])}" data-testid="operator-edit">{escape(op["id"])}</a></td>'
        f"<td>{escape(op['name'])}</td><td>{escape(', '.join(op['lines'])) or '—'}</td>"
        f"<td>{escape(', '.join(op['roles'])) or '—'}</td><td>{escape(', '.join(op['permissions'])) or '—'}</td>"
        f"<td>{'yes' if op['has_password'] else NO_PASSWORD}</td><td>{_reasons(op)}</td></tr>"
        for op in operators
    )
    notice = _notice("ok", message, "admin-message") if message else ""
    main = f"""<h1>Operators</h1>
{notice}
<table class="grid" data-testid="operators-table">
<thead><tr><th>Login</th><th>Name</th><th>Lines (queues)</th><th>Roles</th><th>Permissions</th><th>Password</th>
<th>Chats</th></tr></thead>
<tbody>{rows}</tbody></table>
<h2>New operator</h2>
{operator_form(csrf, None, version=version, errors=form_errors, entered=entered, lines=lines)}"""
    return _shell("Operators", who, csrf, "/admin/operators", main)


def operator_form(
    csrf: str,
    op: dict[str, Any] | None,
    *,
    version: str,
    errors: list[str] | None = None,
    entered: dict[str, Any] | None = None,
    lines: list[tuple[str, str]] | None = None,
) -> str:
    """``lines``: (id, name) of every line, offered as queue memberships."""
    new = op is None
    shown = op or entered  # the operator edited, or what a refused new-operator form held (never a password)
    roles = set(shown["roles"]) if shown else {"operator"}
    perms = set(shown["permissions"]) if shown else {PERMISSION_OPENLINES}
    action = "/admin/operators" if op is None else f"/admin/operators/{escape(op['id'])}"
    # The pattern is compiled with the v flag (unicodeSets): a literal "-" in a class must be escaped.
    login = (
        '<label for="op-id">Login</label><input id="op-id" name="id" required pattern="[A-Za-z0-9_\\-]{1,64}" '
        f'value="{escape(str(entered.get("id", ""))) if entered else ""}" data-testid="op-id">'
        if new
        else ""
    )
    role_boxes = "".join(
        f'<label class="check"><input type="checkbox" name="roles" value="{r}" data-testid="op-role-{r}"'
        f"{' checked' if r in roles else ''}> {r}</label>"
        for r in ROLES
    )
    perm_box = (
        f'<label class="check"><input type="checkbox" name="permissions" value="{PERMISSION_OPENLINES}" '
        f'data-testid="op-perm-openlines"{" checked" if PERMISSION_OPENLINES in perms else ""}> {PERMISSION_OPENLINES} '
        "(open lines: may be offered chats)</label>"
    )
    member = set(shown.get("lines", [])) if shown else set()
    queue_boxes = "".join(
        f'<label class="check"><input type="checkbox" name="lines" value="{escape(line_id)}" '
        f'data-testid="op-line-{escape(line_id)}"{" checked" if line_id in member else ""}> {escape(name)} '
        f'<span class="muted">({escape(line_id)})</span></label>'
        for line_id, name in lines or []
    )
    queues = (
        '<input type="hidden" name="lines-shown" value="1">'
        f"<fieldset><legend>Lines (member of the queue: chats of these lines are offered)</legend>{queue_boxes}</fieldset>"
        if queue_boxes
        else ""
    )
    pw_label = "Password" if new else "New password (leave empty to keep the current one)"
    return f"""{_errors(errors or [])}<form method="post" action="{action}" class="op-form" data-testid="operator-form">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <input type="hidden" name="version" value="{escape(version)}">
  {login}
  <label for="op-name">Name</label>
  <input id="op-name" name="name" required value="{escape(str(shown["name"])) if shown else ""}" data-testid="op-name">
  <fieldset><legend>Roles</legend>{role_boxes}</fieldset>
  <fieldset><legend>Permissions</legend>{perm_box}</fieldset>
  {queues}
  <label for="op-password">{pw_label}</label>
  <input id="op-password" name="password" type="password" autocomplete="new-password" data-testid="op-password">
  <div class="actions"><button type="submit" class="primary" data-testid="op-save">Save</button></div>
</form>"""


def operator_page(
    who: OperatorAccount,
    csrf: str,
    *,
    op: dict[str, Any],
    version: str,
    errors: list[str] | None = None,
    lines: list[tuple[str, str]] | None = None,
) -> str:
    notice = ""
    main = f"""<h1>Operator {escape(op["id"])}</h1>
{notice}
<p>Lines (queues): {escape(", ".join(op["lines"])) or "none"}. A line's other queue settings (order, limits) are on the
<a href="/admin/lines">Lines</a> page.</p>
<p data-testid="operator-chats">{_reasons(op)}</p>
{operator_form(csrf, op, version=version, errors=errors, lines=lines)}
<form method="post" action="/admin/operators/{escape(op["id"])}/delete" class="danger-zone">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <input type="hidden" name="version" value="{escape(version)}">
  <button type="submit" class="danger-outline" data-testid="op-delete">Remove this operator</button>
</form>"""
    return _shell(f"Operator {op['id']}", who, csrf, "/admin/operators", main)


def roles_page(who: OperatorAccount, csrf: str, *, holders: dict[str, list[str]]) -> str:
    rows = "".join(
        f'<tr data-testid="role-row" data-role="{r}"><td><strong>{r}</strong></td><td>{escape(ROLE_TEXT[r])}</td>'
        f"<td>{escape(', '.join(holders.get(r, []))) or '—'}</td></tr>"
        for r in ROLES
    )
    main = f"""<h1>Roles</h1>
<p class="muted">Roles are given on each <a href="/admin/operators">operator's page</a>. Answering chats also needs the
<code>{PERMISSION_OPENLINES}</code> permission and a place in a line's queue. API tokens act as one role
(<a href="/admin/tokens">API tokens</a>, or <code>openlines desk token create</code>).</p>
<table class="grid" data-testid="roles-table"><thead><tr><th>Role</th><th>May</th><th>Held by</th></tr></thead>
<tbody>{rows}</tbody></table>"""
    return _shell("Roles", who, csrf, "/admin/roles", main)


def quick_answers_page(
    who: OperatorAccount,
    csrf: str,
    *,
    lines: list[LineConfig],
    version: str,
    message: str = "",
    errors: dict[str, list[str]] | None = None,
) -> str:
    """Each line's quick answers, one box per answer (the last box adds one)."""
    errors = errors or {}
    sections = []
    for line in lines:
        boxes = "".join(
            f'<textarea name="answer" rows="2" data-testid="qa-answer" aria-label="Quick answer {k + 1}">{escape(a)}</textarea>'
            for k, a in enumerate(line.quick_answers)
        )
        boxes += (
            '<textarea name="answer" rows="2" data-testid="qa-new" placeholder="A new quick answer" '
            'aria-label="New quick answer"></textarea>'
        )
        problems = "".join(f'<li data-testid="config-error">{escape(e)}</li>' for e in errors.get(line.id, []))
        problems = (
            f'<div class="notice error" role="alert"><strong>Not saved.</strong><ul>{problems}</ul></div>' if problems else ""
        )
        sections.append(
            f"""<section class="qa-line" id="line-{escape(line.id)}" data-testid="qa-line" data-line="{escape(line.id)}">
<h2>{escape(line.name)} <span class="muted">({escape(line.id)})</span></h2>
{problems}<form method="post" action="/quick-answers/{escape(line.id)}" class="op-form">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <input type="hidden" name="version" value="{escape(version)}">
  {boxes}
  <div class="actions"><button type="submit" class="primary" data-testid="qa-save">Save</button></div>
</form></section>"""
        )
    body = "".join(sections) or '<p class="muted" data-testid="qa-none">None of the lines lists you in its queue.</p>'
    notice = _notice("ok", message, "admin-message") if message else ""
    main = f"""<h1>Quick answers</h1>
<p class="muted">The canned replies operators pick in the reply box of a line's chats. Empty a box to drop an
answer; write in the last one to add one. Supervisors change the lines whose queue lists them; admins every line.</p>
{notice}{body}"""
    return _shell("Quick answers", who, csrf, "/quick-answers", main)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC") if at is not None else "never"


def tokens_page(
    who: OperatorAccount,
    csrf: str,
    *,
    tokens: list[ApiToken],
    now: datetime,
    message: str = "",
    errors: list[str] | None = None,
    entered: dict[str, str] | None = None,
    created: tuple[str, str] | None = None,
) -> str:
    """API tokens for scripts: list, create (the token shown once, in ``created``), revoke."""
    rows = "".join(
        f'<tr data-testid="token-row" data-token="{escape(t.id)}"><td><code>{escape(t.id)}</code></td><td>{escape(t.name)}</td>'
        f"<td>{escape(t.role)}</td><td>{_when(t.created_at)}</td>"
        f'<td data-testid="token-expires">{_when(t.expires_at)}{" (expired)" if t.expired(now) else ""}</td>'
        f'<td><form method="post" action="/admin/tokens/{escape(t.id)}/revoke">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">'
        f'<button type="submit" class="danger-outline" data-testid="token-revoke">Revoke</button></form></td></tr>'
        for t in tokens
    )
    table = (
        '<table class="grid" data-testid="tokens-table"><thead><tr><th>Id</th><th>For</th><th>Role</th><th>Created</th>'
        f"<th>Expires</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        if tokens
        else '<p class="muted" data-testid="no-tokens">No API tokens.</p>'
    )
    shown = ""
    if created is not None:
        shown = (
            '<div class="notice ok" role="status" data-testid="token-created">'
            f"<strong>Token {escape(created[0])} created.</strong> "
            "Copy it now: it is shown only this once (the desk keeps a digest, not the token)."
            f'<input readonly class="secret" value="{escape(created[1])}" data-testid="token-value" '
            'onfocus="this.select()" aria-label="The new API token"></div>'
        )
    notice = _notice("ok", message, "admin-message") if message else ""
    entered = entered or {}
    role_options = "".join(
        f'<option value="{r}"{" selected" if entered.get("role", "supervisor") == r else ""}>{r}</option>' for r in TOKEN_ROLES
    )
    problems = "".join(f'<li data-testid="token-error">{escape(e)}</li>' for e in errors or [])
    problems = (
        f'<div class="notice error" role="alert"><strong>Not created.</strong><ul>{problems}</ul></div>' if problems else ""
    )
    main = f"""<h1>API tokens</h1>
<p class="muted">Scripts call <code>/api/v1</code> with <code>Authorization: Bearer &lt;token&gt;</code>
(<a href="/api/v1/openapi.json">OpenAPI</a>). A token acts as one role: <code>admin</code> (everything) or
<code>supervisor</code> (sessions and statistics).</p>
{shown}{notice}
{table}
<h2>New token</h2>
{problems}<form method="post" action="/admin/tokens" class="op-form" data-testid="token-form">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <input type="hidden" name="form" value="{secrets.token_hex(8)}">
  <label for="token-name">What it is for</label>
  <input id="token-name" name="name" required maxlength="64" value="{escape(entered.get("name", ""))}"
    placeholder="nightly report" data-testid="token-name">
  <label for="token-role">Role</label>
  <select id="token-role" name="role" data-testid="token-role">{role_options}</select>
  <label for="token-expires">Expires in (e.g. 90m, 12h, 30d; empty: until revoked)</label>
  <input id="token-expires" name="expires_in" value="{escape(entered.get("expires_in", ""))}" data-testid="token-expires-in">
  <div class="actions"><button type="submit" class="primary" data-testid="token-create">Create token</button></div>
</form>"""
    return _shell("API tokens", who, csrf, "/admin/tokens", main)


def _secs(value: float | None) -> str:
    if value is None:
        return "—"
    v = int(value) if float(value).is_integer() else value
    return f"{v} s"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} %"


def _figure_cells(f: dict[str, Any], *, operator: bool = False) -> str:
    """One row of figures; an operator's has no missed or waiting chats (those belong to nobody)."""
    fr, res = f["first_response"], f["resolution"]
    missed, waiting = ("—", "—") if operator else (f["missed"], f["open_unanswered"])
    rating = "—" if f["rating_avg"] is None else f"{f['rating_avg']:.1f}"
    return (
        f'<td data-testid="stat-sessions">{f["sessions"]}</td><td data-testid="stat-answered">{f["answered"]}</td>'
        f'<td data-testid="stat-missed">{missed}</td><td data-testid="stat-open">{waiting}</td>'
        f'<td data-testid="stat-frt-p50">{_secs(fr["median_seconds"])}</td>'
        f'<td data-testid="stat-frt-p90">{_secs(fr["p90_seconds"])}</td>'
        f'<td data-testid="stat-res-p50">{_secs(res["median_seconds"])}</td>'
        f'<td data-testid="stat-res-p90">{_secs(res["p90_seconds"])}</td>'
        f'<td data-testid="stat-rating">{rating}</td><td data-testid="stat-rated">{f["rated"]}</td>'
        f'<td data-testid="stat-offers-missed">{f["offers_missed"]}</td>'
        f'<td data-testid="stat-offers-passed">{f["offers_passed"]}</td>'
        f'<td data-testid="stat-sla">{_pct(f["sla_met_percent"])}</td>'
    )


_FIGURE_HEADS = (
    "<th>Sessions</th><th>Answered</th><th>Missed</th><th>Open, unanswered</th><th>First response, median</th>"
    "<th>First response, p90</th><th>Resolution, median</th><th>Resolution, p90</th><th>Rating (avg)</th><th>Rated</th>"
    "<th>Offers missed</th><th>Offers passed on</th><th>SLA met</th>"
)


_NO_OPERATOR = '<tr><td colspan="14" class="muted">No operator answered a chat opened in this range.</td></tr>'


def _line_section(f: dict[str, Any], q: str, tz: str) -> str:
    lid = escape(f["line_id"])
    ops = "".join(
        f'<tr data-testid="stats-operator" data-operator="{escape(o["operator_id"])}"><td>{escape(o["name"])}</td>'
        f"{_figure_cells(o, operator=True)}</tr>"
        for o in f["operators"]
    )
    channels = "".join(
        f'<tr data-testid="stats-channel" data-channel="{escape(ch)}"><td>{escape(ch)}</td><td>{n}</td></tr>'
        for ch, n in f["by_channel"].items()
    )
    hours = escape(json.dumps(f["by_hour"]))
    days = escape(json.dumps(f["by_day"]))
    return f"""<section class="stats-line" data-testid="stats-line" data-line="{lid}">
<h2>{escape(f["name"])} <a class="small" href="/stats/wallboard/{lid}" data-testid="wallboard-link">Wallboard</a>
 <a class="small" href="/stats.csv?{escape(q)}&amp;line={lid}" data-testid="csv-line">CSV</a></h2>
<div class="scroll"><table class="grid figures" data-testid="stats-table">
<thead><tr><th>Line</th>{_FIGURE_HEADS}</tr></thead>
<tbody><tr data-testid="stats-row" data-line="{lid}"><td>{escape(f["name"])}</td>{_figure_cells(f)}</tr></tbody></table></div>
<div class="charts">
  <figure><figcaption>Chats by hour of day ({escape(tz)})</figcaption>
  <div class="chart" data-testid="chart-hours" data-kind="hours" data-values="{hours}"></div></figure>
  <figure><figcaption>Chats by day</figcaption>
  <div class="chart" data-testid="chart-days" data-kind="days" data-values="{days}"></div></figure>
</div>
<h3>By channel</h3>
<table class="grid narrow" data-testid="stats-channels"><thead><tr><th>Channel</th><th>Chats</th></tr></thead>
<tbody>{channels or '<tr><td colspan="2" class="muted">No chats in this range.</td></tr>'}</tbody></table>
<h3>By operator</h3>
<div class="scroll"><table class="grid figures" data-testid="stats-operators">
<thead><tr><th>Operator</th>{_FIGURE_HEADS}</tr></thead>
<tbody>{ops or _NO_OPERATOR}</tbody></table></div>
</section>"""


def stats_page(
    who: OperatorAccount,
    csrf: str,
    *,
    start: str,
    end: str,
    tz: str,
    line: str,
    lines: list[dict[str, Any]],
    behind: int,
) -> str:
    q = urlencode({"from": start, "to": end, "tz": tz})
    lag = _notice("warn", f"{behind} session events are not counted yet; reload in a moment.", "stats-behind") if behind else ""
    none = '<p class="muted" data-testid="stats-none">No line lists you in its queue.</p>'
    sections = "".join(_line_section(f, q, tz) for f in lines) or none
    main = f"""<h1>Statistics</h1>
<form method="get" action="/stats" class="range" data-testid="stats-form">
  <label>From <input type="date" name="from" value="{escape(start)}" data-testid="stats-from"></label>
  <label>To (including) <input type="date" name="to" value="{escape(end)}" data-testid="stats-to"></label>
  <label>Time zone <input type="text" name="tz" value="{escape(tz)}" maxlength="64" size="16" data-testid="stats-tz"></label>
  {f'<input type="hidden" name="line" value="{escape(line)}">' if line else ""}
  <button type="submit" data-testid="stats-show">Show</button>
  <a href="/stats.csv?{escape(q)}{"&amp;line=" + escape(line) if line else ""}" data-testid="stats-csv">Download CSV</a>
</form>
{lag}
{sections}
<p class="muted">Sessions opened in the range (whole days in the time zone shown; by default the lines' own), on the
line they were opened on; an operator's figures are
the sessions they answered first. First response: from the client's first message to the first acceptance or reply.
Resolution: from the first message to the close, answered sessions. Missed: closed before any answer (spam excepted).
Offers missed: an offer that ran out of time; passed on: skipped, or the operator went away. SLA met: answered sessions
without a missed response target. Definitions: docs/admin.md, "Statistics".</p>
<script src="/static/vendor/uplot/uPlot.iife.min.js"></script>
<script src="/static/stats.js"></script>"""
    head = '<link rel="stylesheet" href="/static/vendor/uplot/uPlot.min.css">\n'
    return _shell("Statistics", who, csrf, "/stats", main, head)


CSV_COLUMNS = (
    "line_id", "line_name", "operator_id", "operator_name", "sessions", "answered", "missed", "open_unanswered",
    "first_response_median_seconds", "first_response_p90_seconds", "resolution_median_seconds", "resolution_p90_seconds",
    "rated", "rating_avg", "offers_missed", "offers_passed", "sla_breached", "sla_met_percent",
)  # fmt: skip


def _csv_safe(value: Any) -> Any:
    """A spreadsheet must not run a name as a formula (=, +, -, @ first): such text gets a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def stats_csv(lines: list[Any]) -> str:
    """One row per line, then one per operator of the line; a column per channel seen (chats_<channel>)."""
    channels = sorted({ch for f in lines for ch in f.by_channel})
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow([*CSV_COLUMNS, *(f"chats_{ch}" for ch in channels)])

    def row(line: Any, f: Any, op_id: str, op_name: str) -> list[Any]:
        values = [
            line.line_id, line.name, op_id, op_name, f.sessions, f.answered, f.missed, f.open_unanswered,
            f.first_response.median_seconds, f.first_response.p90_seconds, f.resolution.median_seconds,
            f.resolution.p90_seconds, f.rated, f.rating_avg, f.offers_missed, f.offers_passed, f.sla_breached,
            f.sla_met_percent,
        ]  # fmt: skip
        values += [f.by_channel.get(ch, 0) for ch in channels]
        return [_csv_safe("" if v is None else v) for v in values]

    for line in lines:
        w.writerow(row(line, line, "", ""))
        for o in line.operators:
            w.writerow(row(line, o, o.operator_id, o.name))
    return out.getvalue()


def wallboard_page(who: OperatorAccount, csrf: str, *, line_id: str, name: str) -> str:
    main = f"""<h1>Wallboard: {escape(name)}</h1>
<div class="wallboard" data-testid="wallboard" data-line="{escape(line_id)}">
  <div class="tile"><span class="label">Waiting</span><span class="value" data-testid="wb-waiting">…</span></div>
  <div class="tile"><span class="label">Longest wait</span><span class="value" data-testid="wb-longest">…</span></div>
  <div class="tile"><span class="label">Operators online</span><span class="value" data-testid="wb-online">…</span></div>
  <div class="tile"><span class="label">Busy (online, with chats)</span><span class="value" data-testid="wb-busy">…</span></div>
  <div class="tile"><span class="label">Chats today</span><span class="value" data-testid="wb-today">…</span></div>
  <div class="tile"><span class="label">Missed today</span><span class="value" data-testid="wb-missed">…</span></div>
</div>
<table class="grid narrow" data-testid="wb-operators"><thead><tr><th>Operator</th><th>Status</th><th>Chats</th></tr></thead>
<tbody></tbody></table>
<p class="muted" data-testid="wb-updated">Connecting…</p>
<script src="/static/wallboard.js"></script>"""
    return _shell(f"Wallboard: {name}", who, csrf, "/stats", main)


def denied(who: OperatorAccount, reason: str) -> str:
    main = f'<h1>No access</h1><p class="notice error" role="alert" data-testid="denied-reason">{escape(reason)}</p>'
    return _shell("No access", who, "", "", main)


def password_page(who: OperatorAccount, csrf: str, *, errors: list[str] | None = None, message: str = "") -> str:
    """An operator changes their own password: the current one, the new one twice."""
    notice = _notice("ok", message, "password-saved") if message else ""
    main = f"""<h1>Your password</h1>
{notice}{_errors(errors or [])}
<p>Changing it signs you out everywhere else (other browsers, other devices); this browser stays signed in.</p>
<form method="post" action="/account/password" class="op-form" data-testid="password-form">
  <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
  <label for="pw-current">Current password</label>
  <input id="pw-current" name="current" type="password" autocomplete="current-password" required data-testid="pw-current">
  <label for="pw-new">New password</label>
  <input id="pw-new" name="new" type="password" autocomplete="new-password" minlength="8" required data-testid="pw-new">
  <label for="pw-again">New password again</label>
  <input id="pw-again" name="again" type="password" autocomplete="new-password" minlength="8" required data-testid="pw-again">
  <div class="actions"><button type="submit" class="primary" data-testid="pw-save">Change password</button></div>
</form>
"""
    return _shell("Your password", who, csrf, "/account/password", main)
