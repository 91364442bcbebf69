"""Who is asking: signed session cookies, CSRF tokens, passwords, desk access.

Pure functions and small classes, no I/O: the HTTP edge reads the request and
asks these. The session cookie is stateless (HMAC-signed, with an expiry), so
any desk replica can check it; the CSRF token is derived from the session's
random nonce, so it is bound to that login and never stored. The cookie also
carries the account's *credential stamp* (a keyed digest of its password hash,
roles and permissions): when any of them changes - whoever writes the account,
the admin pages, the API or ``openlines lines apply`` - the stamp no longer
matches and every cookie issued before is refused by every replica.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from openlines.lines import PERMISSION_OPENLINES
from openlines.roles import ADMIN, DESK_ROLES, SUPERVISOR, is_supervisor
from openlines.state import OperatorAccount

COOKIE_NAME = "ol_desk"
LOGIN_COOKIE_NAME = "ol_desk_login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
ADMIN_ROLE = ADMIN
ADMIN_HOME = "/admin"

# v2: the payload carries the credential stamp; v1 cookies (without it) are refused.
_VERSION = "v2"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class DeskSession:
    """What a valid session cookie says."""

    operator_id: str
    nonce: str  # random per login; the CSRF token is derived from it
    expires: int  # epoch seconds
    stamp: str  # the account's credential stamp when the cookie was issued (Signer.stamp)


class Signer:
    """Signs and checks session cookies and CSRF tokens with keys derived from one secret."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("empty cookie secret")
        root = secret.encode()
        # One key per purpose: a CSRF token can never pass as a cookie signature.
        self._cookie_key = hmac.new(root, b"openlines-desk/cookie", hashlib.sha256).digest()
        self._csrf_key = hmac.new(root, b"openlines-desk/csrf", hashlib.sha256).digest()
        self._stamp_key = hmac.new(root, b"openlines-desk/stamp", hashlib.sha256).digest()

    # -- credential stamp ---------------------------------------------------

    def stamp(self, account: OperatorAccount) -> str:
        """A digest of what a session may not outlive: the password hash, roles and permissions.

        Keyed, so the cookie (readable by its holder) reveals nothing about the
        password hash. The name is left out: renaming someone ends no session.
        """
        material = "\n".join([account.password_hash, ",".join(sorted(account.roles)), ",".join(sorted(account.permissions))])
        return _b64(hmac.new(self._stamp_key, material.encode(), hashlib.sha256).digest()[:16])

    def current(self, session: DeskSession, account: OperatorAccount) -> bool:
        """Whether the session was issued for the account as it is now."""
        return hmac.compare_digest(session.stamp, self.stamp(account))

    # -- session cookie ---------------------------------------------------

    def issue(
        self, account: OperatorAccount, now: float, ttl_seconds: int, *, nonce: str = "", expires: int = 0
    ) -> tuple[str, DeskSession]:
        """A session cookie for ``account``; ``nonce`` and ``expires`` carry an existing session over to a new stamp."""
        session = DeskSession(
            operator_id=account.id,
            nonce=nonce or secrets.token_urlsafe(18),
            expires=expires or int(now) + ttl_seconds,
            stamp=self.stamp(account),
        )
        payload = json.dumps(
            {"o": session.operator_id, "n": session.nonce, "e": session.expires, "s": session.stamp}, separators=(",", ":")
        )
        body = f"{_VERSION}.{_b64(payload.encode())}"
        return f"{body}.{self._sign(body)}", session

    def read(self, value: str | None, now: float) -> DeskSession | None:
        """The session a cookie value carries, or None if absent, forged, tampered with or expired."""
        if not value or value.count(".") != 2:
            return None
        version, payload, signature = value.split(".")
        if version != _VERSION or not hmac.compare_digest(signature, self._sign(f"{version}.{payload}")):
            return None
        try:
            data = json.loads(_unb64(payload))
            session = DeskSession(operator_id=str(data["o"]), nonce=str(data["n"]), expires=int(data["e"]), stamp=str(data["s"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= now or not session.operator_id or not session.nonce or not session.stamp:
            return None
        return session

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._cookie_key, body.encode(), hashlib.sha256).digest())

    # -- CSRF ---------------------------------------------------------------

    def csrf_token(self, nonce: str) -> str:
        """The token a page of this login must send back with every state-changing request."""
        return _b64(hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).digest())

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(nonce), token or "")

    def login_token(self, login_nonce: str) -> str:
        """CSRF token of the login form, bound to the pre-login cookie (stops login CSRF)."""
        return self.csrf_token("login:" + login_nonce)

    def login_token_ok(self, login_nonce: str | None, token: str | None) -> bool:
        return bool(login_nonce) and self.csrf_ok("login:" + (login_nonce or ""), token)


def same_origin(origin: str | None, referer: str | None, host: str) -> bool:
    """Whether the browser says the request comes from a page of this host.

    Browsers send Origin on POST and WebSocket handshakes. Without Origin
    and Referer the request is not from a browser page of another site (or
    the browser hides it); the CSRF token is then what protects us.
    """
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc.lower() == host.lower()
    if referer:
        return urlsplit(referer).netloc.lower() == host.lower()
    return True


class PasswordChecker:
    """argon2 verification that takes as long for an unknown login as for a wrong password."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    def verify(self, stored_hash: str | None, password: str) -> bool:
        if not stored_hash:
            self._check(self._dummy, password)
            return False
        return self._check(stored_hash, password)

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except InvalidHashError:
            # A corrupt hash in the config must not make that login faster to probe.
            self._check(self._dummy, password)
            return False
        except (VerifyMismatchError, VerificationError):
            return False


def access_problem(account: OperatorAccount) -> str | None:
    """Why this account cannot use the workspace, or None when it can."""
    if PERMISSION_OPENLINES not in account.permissions:
        return "your account lacks the open-lines permission: ask an administrator"
    if not any(role in DESK_ROLES for role in account.roles):
        return "your account has neither the operator nor the supervisor role: ask an administrator"
    return None


def nav_links(account: OperatorAccount) -> list[tuple[str, str, str]]:
    """The pages this account may open, as (path, label, test id), for the top bar of every page."""
    admin = ADMIN_ROLE in account.roles
    desk = access_problem(account) is None
    links = []
    if desk:
        links.append(("/", "Chats", "nav-chats"))
    if desk or admin:
        links.append(("/crm", "CRM", "nav-crm"))
    if admin or (desk and SUPERVISOR in account.roles):
        links.append(("/supervisor", "Supervisor", "nav-supervisor"))
    if is_supervisor(account.roles):
        links.append(("/stats", "Statistics", "nav-stats"))
        links.append(("/quick-answers", "Quick answers", "nav-quick-answers"))
    if admin:
        links += [
            ("/admin/lines", "Lines", "nav-admin-lines"),
            ("/admin/operators", "Operators", "nav-admin-operators"),
            ("/admin/roles", "Roles", "nav-admin-roles"),
            ("/admin/tokens", "API tokens", "nav-admin-tokens"),
        ]
    return links


def landing(account: OperatorAccount) -> str | None:
    """Where this account goes after signing in: the workspace, the admin pages, or nowhere (None)."""
    if access_problem(account) is None:
        return "/"
    if ADMIN_ROLE in account.roles:
        return ADMIN_HOME
    return None
