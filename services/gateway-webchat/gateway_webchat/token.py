"""Signed visitor tokens: who a browser is, across reloads, reconnects and replicas.

Format (URL-safe, no padding): ``v1.<account>.<visitor>.<issued_at>.<sig>`` where
``sig`` is base64url(HMAC-SHA256(secret, "v1.<account>.<visitor>.<issued_at>")).
Account and visitor are subject-safe tokens, so ``.`` separates fields unambiguously.

A token is valid for ``ttl`` seconds after ``issued_at``; every welcome hands
the widget a fresh one for the same visitor, so a visitor who comes back
within the validity never notices. An expired token still proves, for
``grace`` more seconds, that its holder is that visitor: it can be renewed
(explicitly, with a ``renew`` frame) but not used to chat. Beyond the grace it
is refused like any bad token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

VERSION = "v1"
MAX_TOKEN = 512
_ACCOUNT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VISITOR = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


CLOCK_SKEW = 300  # seconds a token may seem issued in the future (replicas' clocks differ a little)


class TokenError(ValueError):
    """The token is not one we issued for this account (or it is too old to prove anything)."""


class TokenExpired(TokenError):
    """Our token for this account, past its validity but within the grace: it may be renewed."""

    def __init__(self, tok: VisitorToken, detail: str) -> None:
        super().__init__(detail)
        self.token = tok


@dataclass(frozen=True, slots=True)
class VisitorToken:
    account: str
    visitor: str
    issued_at: int


def new_visitor_id() -> str:
    """128 random bits, URL- and subject-safe."""
    return secrets.token_urlsafe(16)


def _signature(secret: str, payload: str) -> str:
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def sign(secret: str, tok: VisitorToken) -> str:
    if not _ACCOUNT.match(tok.account) or not _VISITOR.match(tok.visitor) or tok.issued_at < 0:
        raise ValueError("account and visitor must be subject-safe tokens, issued_at non-negative")
    payload = f"{VERSION}.{tok.account}.{tok.visitor}.{tok.issued_at}"
    return f"{payload}.{_signature(secret, payload)}"


def issue(secret: str, account: str, now: float, visitor: str = "") -> tuple[str, VisitorToken]:
    """A token for ``visitor`` (a brand-new one when empty) of ``account``, valid from ``now``."""
    tok = VisitorToken(account=account, visitor=visitor or new_visitor_id(), issued_at=int(now))
    return sign(secret, tok), tok


def verify(secret: str, token: str, account: str, *, now: float, ttl: int, grace: int) -> VisitorToken:
    """The visitor of a valid token we issued for ``account``.

    :class:`TokenExpired` when it is past ``ttl`` but within ``grace`` (renewable),
    :class:`TokenError` for anything else.
    """
    tok = _verify_signed(secret, token, account)
    if tok.issued_at > now + CLOCK_SKEW:
        raise TokenError("token is issued in the future")
    age = now - tok.issued_at
    if age <= ttl:
        return tok
    if age <= ttl + grace:
        raise TokenExpired(tok, "visitor token expired; renew it")
    raise TokenError("visitor token expired too long ago to be renewed; start a new visit")


def _verify_signed(secret: str, token: str, account: str) -> VisitorToken:
    if not token or len(token) > MAX_TOKEN or not token.isascii():
        raise TokenError("token is empty, too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 5 or parts[0] != VERSION:
        raise TokenError("token is malformed")
    _, tok_account, visitor, issued, sig = parts
    payload = token[: -len(sig) - 1]
    # Compare the signature before anything derived from the payload, in constant time.
    if not hmac.compare_digest(_signature(secret, payload).encode(), sig.encode()):
        raise TokenError("token signature is invalid")
    if tok_account != account:
        raise TokenError("token belongs to another account")
    if not _VISITOR.match(visitor) or not issued.isdigit():
        raise TokenError("token is malformed")
    return VisitorToken(account=tok_account, visitor=visitor, issued_at=int(issued))
