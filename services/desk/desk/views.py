"""The HTML pages. Plain templates: every value from outside goes through ``escape``."""

from __future__ import annotations

from html import escape

from desk.auth import CSRF_FIELD

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


def denied_page(name: str, reason: str) -> str:
    return (
        _HEAD.format(title="No access · openlines desk", extra="")
        + f"""<body class="login-body">
<main class="login-card">
  <h1 class="brand">openlines <span>desk</span></h1>
  <h2>{escape(name)}, you cannot open the workspace</h2>
  <p class="form-error" role="alert" data-testid="denied-reason">{escape(reason[:1].upper() + reason[1:])}.</p>
  <p><a href="/login">Sign in with another account</a></p>
</main>
</body>
</html>
"""
    )


def workspace_page(operator_id: str, name: str, csrf: str) -> str:
    extra = f'<meta name="csrf-token" content="{escape(csrf)}">\n<script src="/static/desk.js" defer></script>\n'
    return (
        _HEAD.format(title="openlines desk", extra=extra)
        + f"""<body class="desk" data-operator-id="{escape(operator_id)}" data-operator-name="{escape(name)}">
<header class="topbar">
  <div class="brand">openlines <span>desk</span></div>
  <div class="status-switch" role="group" aria-label="My status" data-testid="status-switch">
    <button type="button" data-status="online" data-testid="status-online" aria-pressed="false">Online</button>
    <button type="button" data-status="away" data-testid="status-away" aria-pressed="false">Away</button>
    <button type="button" data-status="offline" data-testid="status-offline" aria-pressed="false">Offline</button>
  </div>
  <div class="spacer"></div>
  <span class="conn" id="conn" data-testid="connection" data-state="connecting">connecting…</span>
  <span class="me" data-testid="operator-name">{escape(name)}</span>
  <form method="post" action="/logout" class="logout">
    <input type="hidden" name="csrf_token" value="{escape(csrf)}">
    <button type="submit" data-testid="logout">Sign out</button>
  </form>
</header>
<div class="toast" id="toast" data-testid="new-chat-toast" hidden></div>
<div class="error-bar" id="error" data-testid="error" role="alert" hidden></div>
<main class="layout">
  <aside class="sidebar">
    <h2>My chats <span class="count" id="chat-count" data-testid="chat-count">0</span></h2>
    <ul class="chat-list" id="chat-list" data-testid="chat-list"></ul>
    <p class="empty" id="list-empty" data-testid="list-empty">No open chats.</p>
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
          <button type="button" class="primary" id="accept" data-testid="accept" hidden>Accept</button>
          <button type="button" class="danger-outline" id="close" data-testid="close">Close chat</button>
          <button type="button" class="danger" id="close-confirm" data-testid="close-confirm" hidden>Confirm close</button>
        </div>
      </div>
      <ol class="transcript" id="transcript" data-testid="transcript" aria-live="polite"></ol>
      <form class="composer" id="composer">
        <textarea id="reply" data-testid="reply-input" rows="3" maxlength="4000"
          placeholder="Write a reply — Enter sends, Shift+Enter for a new line"></textarea>
        <button type="submit" class="primary" id="send" data-testid="reply-send">Send</button>
      </form>
    </div>
  </section>
</main>
</body>
</html>
"""
    )
