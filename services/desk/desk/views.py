"""The HTML pages. Plain templates: every value from outside goes through ``escape``."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from desk.auth import CSRF_FIELD
from openlines import files

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/desk.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
{extra}</head>
"""


Nav = list[tuple[str, str, str]]  # (path, label, test id) of the pages the account may open: desk.auth.nav_links


def login_page(token: str, *, error: str = "", login: str = "") -> str:
    error_html = f'<p class="form-error" role="alert" data-testid="login-error">{escape(error)}</p>' if error else ""
    return (
        _HEAD.format(title="Sign in · openlines desk", extra="")
        + f"""<body class="login-body">
<main class="login-card">
  <h1 class="brand">openlines <span>desk</span></h1>
  <p class="muted">Sign in with your operator account.</p>
  {error_html}
  <form method="post" action="/login" data-testid="login-form">
    <input type="hidden" name="{CSRF_FIELD}" value="{escape(token)}">
    <label for="login">Login</label>
    <input id="login" name="login" data-testid="login-user" autocomplete="username" required autofocus value="{escape(login)}">
    <label for="password">Password</label>
    <input id="password" name="password" type="password" data-testid="login-password" autocomplete="current-password" required>
    <button type="submit" class="primary" data-testid="login-submit">Sign in</button>
  </form>
</main>
</body>
</html>
"""
    )


def denied_page(name: str, reason: str, what: str = "the workspace") -> str:
    back = '<a href="/" data-testid="back-to-chats">Back to my chats</a> · ' if what != "the workspace" else ""
    return (
        _HEAD.format(title="No access · openlines desk", extra="")
        + f"""<body class="login-body">
<main class="login-card">
  <h1 class="brand">openlines <span>desk</span></h1>
  <h2>{escape(name)}, you cannot open {escape(what)}</h2>
  <p class="form-error" role="alert" data-testid="denied-reason">{escape(reason[:1].upper() + reason[1:])}.</p>
  <p>{back}<a href="/login">Sign in with another account</a></p>
</main>
</body>
</html>
"""
    )


def workspace_page(operator_id: str, name: str, csrf: str, *, nav: Nav, max_upload: int = 0, start_online: bool = False) -> str:
    extra = (
        f'<meta name="csrf-token" content="{escape(csrf)}">\n<meta name="max-upload" content="{max_upload}">\n'
        '<script src="/static/desk.js" defer></script>\n'
    )
    online = "true" if start_online else "false"
    # The other pages open in new tabs: leaving this page would close its WebSocket, and the router
    # counts that as leaving the desk.
    links = "".join(
        f'<a href="{href}" target="_blank" data-testid="{tid}">{label}</a>' for href, label, tid in nav if href != "/"
    )
    return (
        _HEAD.format(title="openlines desk", extra=extra)
        + f"""<body class="desk" data-operator-id="{escape(operator_id)}" data-operator-name="{escape(name)}"
  data-start-online="{online}">
<header class="topbar">
  <div class="brand">openlines <span>desk</span></div>
  <nav class="nav" aria-label="Pages">
    <a href="/" aria-current="page" data-testid="nav-chats">Chats</a>{links}
  </nav>
  <div class="status-switch" role="group" aria-label="My status" data-testid="status-switch">
    <button type="button" data-status="online" data-testid="status-online" aria-pressed="false">Online</button>
    <button type="button" data-status="away" data-testid="status-away" aria-pressed="false">Away</button>
    <button type="button" data-status="offline" data-testid="status-offline" aria-pressed="false">Offline</button>
  </div>
  <div class="spacer"></div>
  <span class="conn" id="conn" data-testid="connection" data-state="connecting">connecting…</span>
{_signed_in_as(name, csrf)}
</header>
<div class="toast" id="toast" data-testid="new-chat-toast" hidden></div>
<div class="error-bar" id="error" data-testid="error" role="alert" hidden></div>
<main class="layout">
  <aside class="sidebar">
    <div class="views" role="tablist" aria-label="Views" data-testid="views">
      <button type="button" role="tab" data-view="mine" data-testid="view-mine" aria-selected="true">My chats
        <span class="count" id="chat-count" data-testid="chat-count">0</span></button>
      <button type="button" role="tab" data-view="queue" data-testid="view-queue" aria-selected="false">Queue</button>
      <button type="button" role="tab" data-view="lines" data-testid="view-lines" aria-selected="false">All my lines</button>
      <button type="button" role="tab" data-view="closed" data-testid="view-closed" aria-selected="false">Closed</button>
    </div>
    <form class="finder" id="finder" role="search" data-testid="finder">
      <input type="search" id="search" data-testid="search" maxlength="200" aria-label="Search"
        placeholder="Search: name, phone, e-mail, words">
      <div class="filters">
        <select id="filter-line" data-testid="filter-line" aria-label="Line"><option value="">All lines</option></select>
        <select id="filter-channel" data-testid="filter-channel" aria-label="Channel">
          <option value="">All channels</option></select>
        <select id="filter-status" data-testid="filter-status" aria-label="Status"><option value="">Any status</option></select>
        <select id="filter-tag" data-testid="filter-tag" aria-label="Tag"><option value="">Any tag</option></select>
      </div>
    </form>
    <ul class="chat-list" id="chat-list" data-testid="chat-list"></ul>
    <p class="empty" id="list-empty" data-testid="list-empty">No open chats.</p>
    <ul class="chat-list" id="view-list" data-testid="view-list" hidden></ul>
    <p class="empty" id="view-empty" data-testid="view-empty" hidden></p>
  </aside>
  <section class="chat" id="chat" data-testid="chat-pane">
    <div class="placeholder" id="placeholder" data-testid="placeholder">Select a chat on the left.</div>
    <div class="chat-main" id="chat-main" hidden>
      <div class="chat-head">
        <div>
          <div class="chat-title" id="chat-title" data-testid="chat-title"></div>
          <div class="chat-meta" id="chat-meta" data-testid="chat-meta"></div>
        </div>
        <div class="chat-actions">
          <button type="button" class="card-toggle" id="card-toggle" data-testid="card-toggle" aria-expanded="false"
            aria-controls="client-card" title="Who the client is (the card beside the chat on a wider screen)">Client</button>
          <span class="offer-countdown" id="offer-countdown" data-testid="offer-countdown" hidden></span>
          <button type="button" class="primary" id="take" data-testid="take" hidden
            title="Take this waiting chat: it becomes yours">Take</button>
          <button type="button" class="primary" id="accept" data-testid="accept" aria-keyshortcuts="Alt+A" title="Alt+A"
            hidden>Accept</button>
          <button type="button" id="skip" data-testid="skip" hidden title="Let the chat pass to the next operator">Skip</button>
          <button type="button" id="transfer" data-testid="transfer"
            title="Give the chat to another operator or line">Transfer…</button>
          <button type="button" id="pin" data-testid="pin" aria-pressed="false"
            title="A pinned chat stays yours when you go away">Pin</button>
          <button type="button" class="danger-outline" id="spam" data-testid="spam"
            title="Close the chat and ignore this client's further messages">Spam</button>
          <button type="button" class="danger" id="spam-confirm" data-testid="spam-confirm" hidden>Confirm spam</button>
          <button type="button" class="danger-outline" id="close" data-testid="close" aria-keyshortcuts="Alt+C"
            title="Alt+C">Close chat</button>
          <button type="button" class="danger" id="close-confirm" data-testid="close-confirm" hidden>Confirm close</button>
        </div>
      </div>
      <div class="tags-row" data-testid="tags-row">
        <ul class="tags" id="tags" data-testid="tags" aria-label="Tags"></ul>
        <form class="tag-add" id="tag-add" data-testid="tag-add">
          <input id="tag-input" data-testid="tag-input" maxlength="32" list="tag-suggestions" aria-label="Add a tag"
            placeholder="+ tag">
          <datalist id="tag-suggestions"></datalist>
        </form>
      </div>
      <form class="transfer-panel" id="transfer-panel" data-testid="transfer-panel" hidden>
        <label for="transfer-target">Transfer to</label>
        <select id="transfer-target" data-testid="transfer-target" required></select>
        <input id="transfer-comment" data-testid="transfer-comment" maxlength="1000" aria-label="Comment for whoever gets it"
          placeholder="Comment for whoever gets it (optional)">
        <button type="submit" class="primary" id="transfer-go" data-testid="transfer-go">Transfer</button>
        <button type="button" id="transfer-cancel" data-testid="transfer-cancel">Cancel</button>
        <span class="muted small">An operator must be online and accept it; a line puts it in that line's queue.</span>
      </form>
      <div class="chat-body">
      <ol class="transcript" id="transcript" data-testid="transcript" aria-live="polite"></ol>
      <p class="typing muted small" id="client-typing" data-testid="client-typing" hidden></p>
      <div class="toasts" id="toasts" data-testid="toasts" aria-live="polite"></div>
      <aside class="client-card" id="client-card" data-testid="client-card" aria-label="Client">
        <h3 id="card-name" data-testid="card-name"></h3>
        <dl class="card-fields">
          <dt>Channel</dt><dd id="card-channel" data-testid="card-channel"></dd>
          <dt>Phone</dt><dd id="card-phone" data-testid="card-phone"></dd>
          <dt>E-mail</dt><dd id="card-email" data-testid="card-email"></dd>
          <dt data-visit hidden>Page</dt><dd id="card-page" data-testid="card-page" data-visit hidden></dd>
          <dt data-visit hidden>Came from</dt><dd id="card-referrer" data-testid="card-referrer" data-visit hidden></dd>
          <dt data-visit hidden>Browser</dt><dd id="card-browser" data-testid="card-browser" data-visit hidden></dd>
          <dt data-visit hidden>Language</dt><dd id="card-language" data-testid="card-language" data-visit hidden></dd>
          <dt data-visit hidden>Consent</dt><dd id="card-consent" data-testid="card-consent" data-visit hidden></dd>
        </dl>
        <div class="card-actions">
          <button type="button" id="card-edit" data-testid="card-edit">Edit</button>
          <button type="button" id="card-merge" data-testid="card-merge">Merge with…</button>
        </div>
        <form class="card-form" id="card-edit-form" data-testid="card-edit-form" hidden>
          <label>Name <input id="card-edit-name" data-testid="card-edit-name" maxlength="200" autocomplete="off"></label>
          <label>Phone <input id="card-edit-phone" data-testid="card-edit-phone" type="tel" maxlength="40"
            placeholder="+371 2612 3456" autocomplete="off"></label>
          <label>E-mail <input id="card-edit-email" data-testid="card-edit-email" type="email" maxlength="254"
            autocomplete="off"></label>
          <p class="form-error small" id="card-edit-error" data-testid="card-edit-error" role="alert" hidden></p>
          <div class="card-actions">
            <button type="submit" id="card-edit-save" data-testid="card-edit-save">Save</button>
            <button type="button" id="card-edit-cancel" data-testid="card-edit-cancel">Cancel</button>
          </div>
          <p class="muted small">Saved on the client and sent to the linked CRM record.</p>
        </form>
        <div class="card-form" id="card-merge-panel" data-testid="card-merge-panel" hidden>
          <label>Find the other client
            <input id="card-merge-search" data-testid="card-merge-search" type="search" maxlength="200"
              placeholder="name, phone, e-mail" autocomplete="off"></label>
          <ul class="card-merge-results" id="card-merge-results" data-testid="card-merge-results"></ul>
          <p class="small" id="card-merge-confirm-text" data-testid="card-merge-confirm-text" hidden></p>
          <p class="form-error small" id="card-merge-error" data-testid="card-merge-error" role="alert" hidden></p>
          <div class="card-actions">
            <button type="button" id="card-merge-go" data-testid="card-merge-go" hidden>Merge</button>
            <button type="button" id="card-merge-cancel" data-testid="card-merge-cancel">Cancel</button>
          </div>
          <p class="muted small">This client remains; the other one's chats and conversations become this client's.
            No CRM record is deleted.</p>
        </div>
        <h4>CRM</h4>
        <div id="card-crm" data-testid="card-crm" class="card-crm"></div>
        <h4>Previous conversations</h4>
        <ul id="card-previous" data-testid="card-previous" class="card-previous"></ul>
        <p id="card-previous-note" class="muted small" data-testid="card-previous-note"></p>
      </aside>
      </div>
      <div class="window-banner" id="window-banner" data-testid="window-banner" hidden></div>
      <form class="template-panel" id="template-panel" data-testid="template-panel" hidden>
        <div class="template-head">
          <strong id="template-title" data-testid="template-title"></strong>
          <span class="muted small">an approved WhatsApp template: only its variables can be filled in</span>
        </div>
        <div class="template-fields" id="template-fields" data-testid="template-fields"></div>
        <div class="template-preview" id="template-preview" data-testid="template-preview"></div>
        <div class="template-actions">
          <button type="submit" class="primary" id="template-send" data-testid="template-send">Send template</button>
          <button type="button" id="template-cancel" data-testid="template-cancel">Cancel</button>
        </div>
      </form>
      <form class="composer" id="composer">
        <div class="composer-tools">
          <select id="templates" data-testid="templates" aria-label="Message templates" hidden>
            <option value="">Templates…</option>
          </select>
          <select id="quick-answers" data-testid="quick-answers" aria-label="Quick answers" hidden>
            <option value="">Quick answers…</option>
          </select>
          <button type="button" class="button" id="note-toggle" data-testid="note-toggle" aria-pressed="false"
            title="A private note: colleagues see it, the client never does; @login tells a colleague">Private note</button>
          <button type="button" class="button" id="attach-label" data-testid="attach"
            aria-controls="attach-input">Attach file</button>
          <input type="file" id="attach-input" data-testid="attach-input" multiple hidden>
          <ul class="attachments" id="attachments" data-testid="attachments"></ul>
        </div>
        <div class="composer-main">
          <textarea id="reply" data-testid="reply-input" rows="3" maxlength="4000"
            placeholder="Write a reply — Enter sends, Shift+Enter for a new line"></textarea>
          <button type="submit" class="primary" id="send" data-testid="reply-send">Send</button>
        </div>
      </form>
    </div>
  </section>
</main>
</body>
</html>
"""
    )


# -- pages beside the workspace: CRM, supervisor, transcript --------------------------------------


def _signed_in_as(name: str, csrf: str) -> str:
    """The end of every top bar: who is signed in, and the sign-out button."""
    return f"""  <span class="me" data-testid="operator-name">{escape(name)}</span>
  <a class="account" href="/account/password" data-testid="nav-password">Password</a>
  <form method="post" action="/logout" class="logout">
    <input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf)}">
    <button type="submit" data-testid="logout">Sign out</button>
  </form>"""


def _topbar(name: str, csrf: str, current: str, *, links: Nav) -> str:
    here = ' aria-current="page"'
    nav = "".join(
        f'<a href="{href}" data-testid="{tid}"{here if href == current else ""}>{label}</a>' for href, label, tid in links
    )
    return f"""<header class="topbar">
  <div class="brand">openlines <span>desk</span></div>
  <nav class="nav" aria-label="Pages">{nav}</nav>
  <div class="spacer"></div>
{_signed_in_as(name, csrf)}
</header>
"""


def _page(title: str, body_class: str, topbar: str, main: str, extra: str = "") -> str:
    return (
        _HEAD.format(title=f"{escape(title)} · openlines desk", extra=extra)
        + f'<body class="{body_class}">\n{topbar}<main class="page">\n{main}\n</main>\n</body>\n</html>\n'
    )


def _when(value: Any) -> str:
    text = str(value or "")
    return escape(text[:16].replace("T", " ")) if text else ""


def _list(values: Any) -> str:
    return escape(", ".join(str(v) for v in values or []))


CRM_TITLES = {"lead": "Leads", "deal": "Deals", "contact": "Contacts"}


def _crm_record(kind: str, r: dict[str, Any], acts: list[dict[str, Any]], names: dict[str, str], selected: bool) -> str:
    rid = str(r.get("id", ""))
    who = str(r.get("assigned_by", ""))
    title = r.get("title") or r.get("name") or f"{kind} {rid}"
    stage = r.get("stage", "") if kind != "contact" else ""
    pipeline = f" (pipeline {escape(str(r['pipeline']))})" if kind == "deal" and r.get("pipeline") not in (None, "", "0") else ""
    contact = (
        f'<a href="/crm?record=contact-{escape(str(r["contact_id"]))}">contact {escape(str(r["contact_id"]))}</a>'
        if r.get("contact_id")
        else ""
    )
    act_items = "".join(
        f'<li data-testid="crm-activity">{escape(str(a.get("subject") or "conversation"))} · '
        f"{'completed' if a.get('completed') else 'open'} · {_when(a.get('start'))} · "
        f'<a href="/transcript/{escape(str(a.get("session_id", "")))}" data-testid="crm-transcript-link">transcript</a></li>'
        for a in acts
    )
    chosen = ' class="selected"' if selected else ""
    person = f'<br><span class="muted">{escape(str(r["name"]))}</span>' if r.get("title") and r.get("name") else ""
    return f"""<tr id="{kind}-{escape(rid)}" data-testid="crm-{kind}" data-record-id="{escape(rid)}"{chosen}>
  <td class="num">{escape(rid)}</td>
  <td><strong>{escape(str(title))}</strong>{person}</td>
  <td data-testid="crm-source">{escape(str(r.get("source_id", "")))}</td>
  <td data-testid="crm-stage">{escape(str(stage))}{pipeline}</td>
  <td data-testid="crm-responsible">{escape(names.get(who, who))}</td>
  <td>{_list(r.get("phones"))}<br>{_list(r.get("emails"))}<br>{contact}</td>
  <td class="muted">{_when(r.get("created_at"))}</td>
  <td>{f'<ul class="acts">{act_items}</ul>' if act_items else '<span class="muted">none</span>'}</td>
</tr>"""


def crm_page(
    name: str,
    csrf: str,
    *,
    nav: Nav,
    backend: str,
    portal: str,
    query: str,
    record: str,
    view: Any,
    names: dict[str, str],
) -> str:
    top = _topbar(name, csrf, "/crm", links=nav)
    if backend != "builtin":
        where = (
            f'<a href="{escape(portal)}/crm/" data-testid="crm-portal" rel="noopener">{escape(portal)}</a>'
            if portal
            else "your Bitrix24 portal"
        )
        main = f"""<h1>CRM</h1>
<p class="notice" data-testid="crm-elsewhere">This desk's conversations are written to Bitrix24: the leads, deals and
contacts live in {where}. Open them there; each chat's client card links to its records.</p>"""
        return _page("CRM", "subpage", top, main)
    form = f"""<form method="get" action="/crm" class="search" role="search">
  <input name="q" value="{escape(query)}" maxlength="100" placeholder="Name, phone or e-mail"
    data-testid="crm-search" aria-label="Search">
  <button type="submit" class="primary" data-testid="crm-search-submit">Search</button>
  {'<a href="/crm" data-testid="crm-clear">Show all</a>' if query or record else ""}
</form>"""
    if not view.present:
        body = (
            '<p class="notice" data-testid="crm-empty">The built-in CRM has no records yet: crm-sync writes them '
            "when clients write to a line with <code>crm.enabled</code>.</p>"
        )
        return _page("CRM", "subpage", top, "<h1>CRM</h1>" + form + body)
    sections = []
    for kind in ("lead", "deal", "contact"):
        rows = view.records.get(kind, [])
        shown = len(rows)
        total = view.totals.get(kind, 0)
        more = f' <span class="muted">(newest {shown} of {total})</span>' if total > shown else ""
        body_rows = "".join(
            _crm_record(
                kind, r, view.activities.get(f"{kind}-{r.get('id', '')}", []), names, record == f"{kind}-{r.get('id', '')}"
            )
            for r in rows
        )
        table = (
            f"""<table class="grid" data-testid="crm-{kind}s">
<thead><tr><th>#</th><th>{"Title" if kind != "contact" else "Name"}</th><th>SOURCE_ID</th>
<th>{"Stage" if kind != "contact" else ""}</th><th>Responsible</th><th>Phone / e-mail</th><th>Created (UTC)</th>
<th>Conversations</th></tr></thead>
<tbody>{body_rows}</tbody></table>"""
            if rows
            else f'<p class="muted" data-testid="crm-{kind}s-empty">No {CRM_TITLES[kind].lower()}{" match" if query else ""}.</p>'
        )
        sections.append(
            f'<section class="crm-kind"><h2>{CRM_TITLES[kind]} <span class="count">{total}</span>{more}</h2>{table}</section>'
        )
    heading = "<h1>CRM <span class=muted>built-in</span></h1>"
    return _page("CRM", "subpage", top, heading + form + "".join(sections))


def supervisor_page(name: str, csrf: str, *, nav: Nav) -> str:
    extra = f'<meta name="csrf-token" content="{escape(csrf)}">\n<script src="/static/supervisor.js" defer></script>\n'
    top = _topbar(name, csrf, "/supervisor", links=nav)
    main = """<h1>Supervisor <span class="conn" id="conn" data-testid="connection" data-state="connecting">loading…</span></h1>
<p class="muted">Refreshes every 3 seconds. <span id="updated" data-testid="updated"></span></p>
<div class="error-bar" id="error" data-testid="error" role="alert" hidden></div>
<section class="sup-watch" id="watch" data-testid="sup-watch" hidden aria-live="polite">
  <h2><span id="watch-title" data-testid="sup-watch-title"></span>
    <button type="button" id="watch-intercept" data-testid="sup-watch-intercept">Intercept</button>
    <button type="button" id="watch-close" data-testid="sup-watch-close">Stop reading</button></h2>
  <p class="muted small">Read only: the client and the operator do not see that you read along.</p>
  <ol class="transcript static" id="watch-transcript" data-testid="sup-watch-transcript"></ol>
</section>
<div id="lines" data-testid="supervisor-lines"></div>"""
    return _page("Supervisor", "subpage", top, main, extra)


def transcript_page(name: str, csrf: str, *, nav: Nav, session: dict[str, Any], entries: list[dict[str, Any]]) -> str:
    top = _topbar(name, csrf, "", links=nav)
    items = []
    for e in entries:
        direction = str(e.get("direction", ""))
        who = (
            session.get("client_name") or "Client"
            if direction == "in"
            else ""
            if direction == "system"
            else e.get("author_name") or ("Auto-reply" if e.get("author_id") == "auto" else "Operator")
        )
        items.append(
            f'<li class="entry {escape(direction)}" data-testid="transcript-entry" data-direction="{escape(direction)}">'
            f'<div class="entry-head"><span class="who">{escape(str(who))}</span>'
            f'<time class="at">{_when(e.get("at"))}</time></div>'
            f'<div class="text">{escape(str(e.get("text", "")))}</div>{_attachment_links(str(session.get("id", "")), e)}</li>'
        )
    meta = (
        f"{escape(str(session.get('channel', '')))} · {escape(str(session.get('line_name', '')))} · "
        f"{escape(str(session.get('status', '')))} · opened {_when(session.get('opened_at'))}"
        + (f" · closed {_when(session.get('closed_at'))}" if session.get("closed_at") else "")
    )
    main = f"""<h1 data-testid="transcript-title">{escape(str(session.get("client_name") or "Client"))}</h1>
<p class="muted" data-testid="transcript-meta">{meta}</p>
<ol class="transcript static" data-testid="transcript">{"".join(items) or '<li class="muted">No messages.</li>'}</ol>"""
    return _page("Conversation", "subpage", top, main)


def _attachment_links(session_id: str, entry: dict[str, Any]) -> str:
    """Links to the files we keep (served to whoever may read the chat); other attachments by name only."""
    links = []
    for a in entry.get("attachments") or []:
        label = escape(str(a.get("name") or a.get("kind") or "file"))
        ref = str(a.get("ref") or "")
        if files.parse_ref(ref) is not None and session_id:
            url = f"/api/sessions/{quote(session_id, safe='')}/file?ref={quote(ref, safe='')}&download=1"
            links.append(f'<a class="attachment" href="{escape(url)}" data-testid="attachment-download">{label}</a>')
        else:
            links.append(f'<span class="attachment">{label}</span>')
    return f'<div class="attachments">{"".join(links)}</div>' if links else ""
