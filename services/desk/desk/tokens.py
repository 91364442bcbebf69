"""API tokens for scripts: ``Authorization: Bearer olt_<id>_<secret>`` on /api/v1.

A token is created with ``openlines desk token create`` and shown once; the
desk keeps only the SHA-256 of its secret in the ``ol-desk-tokens`` bucket,
keyed by its public id, with the role it acts as. The secret is 32 random
bytes, so a fast hash is enough (argon2's slowness protects guessable human
passwords, and would cost every API call tens of milliseconds). A token may
carry an expiry (``--expires-in 30d``): past it, it is refused with a 401 that
says so, and ``token list`` shows it as expired.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from openlines import bus, subjects
from openlines.bus import kv_entries, kv_get
from openlines.envelopes import utcnow
from openlines.roles import SUPERVISOR_ROLES

TOKEN_ROLES = SUPERVISOR_ROLES  # an API token acts as an administrator or a supervisor
PREFIX = "olt_"
_TOKEN = re.compile(r"^olt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9 ._-]{1,64}$")
_DURATION = re.compile(r"^(\d{1,5})([mhd])$")
_UNIT = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
MAX_LIFETIME = timedelta(days=3660)


def parse_duration(text: str) -> timedelta:
    """``90m``, ``12h``, ``30d`` -> a positive duration of at most ten years."""
    m = _DURATION.match(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"expiry {text!r}: give a number and a unit, e.g. 90m, 12h or 30d")
    value = int(m.group(1)) * _UNIT[m.group(2)]
    if value > MAX_LIFETIME:
        raise ValueError(f"expiry {text!r}: at most {MAX_LIFETIME.days} days")
    return value


class ApiToken(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    name: str  # what it is for, e.g. "nightly report"
    role: str  # one of TOKEN_ROLES
    secret_sha256: str
    created_at: datetime
    expires_at: datetime | None = None  # None: until revoked
    form: str = ""  # the admin page's form that created it: a re-sent form (reload, back) creates no second token

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token(name: str, role: str, expires_in: timedelta | None = None) -> tuple[str, ApiToken]:
    """A fresh token: the string to hand out (once) and the record to store; ``expires_in`` None = until revoked."""
    if role not in TOKEN_ROLES:
        raise ValueError(f"role must be one of {', '.join(TOKEN_ROLES)}")
    if not _NAME.match(name):
        raise ValueError("name must be 1-64 characters of letters, digits, space . _ -")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    expires_at = now + expires_in if expires_in is not None else None
    record = ApiToken(id=token_id, name=name, role=role, secret_sha256=_digest(secret), created_at=now, expires_at=expires_at)
    return f"{PREFIX}{token_id}_{secret}", record


def split(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token string, else None."""
    m = _TOKEN.match(token)
    return (m.group(1), m.group(2)) if m else None


async def open_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """The tokens bucket; created on first use (the desk owns it)."""
    return await bus.own_bucket(js, subjects.KV_DESK_TOKENS, replicas=replicas)


class TokenStore:
    def __init__(self, js: JetStreamContext, kv: KeyValue) -> None:
        self.js = js
        self.kv = kv

    async def add(self, record: ApiToken) -> None:
        await self.kv.create(record.id, msgspec.json.encode(record))

    async def all(self) -> list[ApiToken]:
        out = []
        for _key, (_rev, data) in (await kv_entries(self.js, subjects.KV_DESK_TOKENS)).items():
            try:
                out.append(msgspec.json.decode(data, type=ApiToken))
            except msgspec.DecodeError:
                continue
        return sorted(out, key=lambda t: t.created_at)

    async def revoke(self, token_id: str) -> bool:
        record, _ = await kv_get(self.kv, token_id, ApiToken) if re.fullmatch(r"[0-9a-f]{12}", token_id) else (None, None)
        if record is None:
            return False
        await self.kv.delete(token_id)
        return True

    async def verify(self, token: str) -> ApiToken | None:
        """The token's record when the string is a known token, else None (the caller checks ``expired``)."""
        parts = split(token)
        if parts is None:
            return None
        record, _ = await kv_get(self.kv, parts[0], ApiToken)
        if record is None or not hmac.compare_digest(record.secret_sha256, _digest(parts[1])):
            return None
        return record
