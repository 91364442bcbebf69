"""Sign-in rate limiting and server-side sign-out, both kept in NATS KV.

Why KV and not memory: operators reach the desk through a load balancer, so
an attacker's attempts land on every replica; a per-replica counter would
give them N times the budget, and a sign-out seen by one replica only would
leave a copied cookie working on the others. KV is shared by every replica
and survives a restart; the cost is one KV read per request (revocation) and
a compare-and-set per failed sign-in.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from openlines import subjects
from openlines.bus import kv_get, kv_update

# Longer than the longest session a cookie can carry (Settings.session_hours is at most 744).
REVOCATION_TTL = 745 * 3600.0


class Failures(msgspec.Struct, kw_only=True):
    times: list[float] = []  # epoch seconds of recent failed sign-ins


def _key(kind: str, value: str) -> str:
    # Logins and addresses (IPv6 has ':') are hashed into KV-safe keys.
    return f"{kind}.{hashlib.blake2b(value.lower().encode(), digest_size=12).hexdigest()}"


async def open_kv(js: JetStreamContext, bucket: str, ttl: float, replicas: int) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(
            js_api.KeyValueConfig(bucket=bucket, history=1, ttl=ttl, replicas=replicas, storage=js_api.StorageType.FILE)
        )


@dataclass(frozen=True, slots=True)
class Limits:
    window: float
    per_login: int
    per_address: int


class LoginLimiter:
    """A sliding window of failed sign-ins per login and per client address."""

    def __init__(self, kv: KeyValue, limits: Limits) -> None:
        self.kv = kv
        self.limits = limits

    async def retry_after(self, login: str, address: str, now: float) -> int:
        """Seconds until this login may be tried again from this address; 0 = now."""
        checks = [(_key("addr", address), self.limits.per_address)]
        if login:
            checks.append((_key("login", login), self.limits.per_login))
        wait = 0.0
        for key, limit in checks:
            got, _ = await kv_get(self.kv, key, Failures)
            recent = sorted(t for t in (got.times if got else []) if t > now - self.limits.window)
            if len(recent) >= limit:
                wait = max(wait, recent[-limit] + self.limits.window - now)
        return math.ceil(wait)

    async def failed(self, login: str, address: str, now: float) -> None:
        for key, limit in ((_key("addr", address), self.limits.per_address), (_key("login", login), self.limits.per_login)):

            def add(cur: Failures | None, limit: int = limit) -> Failures:
                recent = [t for t in (cur.times if cur else []) if t > now - self.limits.window]
                return Failures(times=[*recent, now][-limit:])

            await kv_update(self.kv, key, Failures, add)

    async def succeeded(self, login: str) -> None:
        """A right password clears the login's failures (the address keeps its own)."""
        await self.kv.delete(_key("login", login))


class Revocations:
    """Sessions signed out before their cookie expires: nonce -> revoked."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def revoke(self, nonce: str) -> None:
        await self.kv.put(nonce, b"1")

    async def revoked(self, nonce: str) -> bool:
        value, _ = await kv_get(self.kv, nonce, int)
        return value is not None


async def open_guards(js: JetStreamContext, limits: Limits, replicas: int) -> tuple[LoginLimiter, Revocations]:
    """The sign-in counters and revoked logins; replicated like every bucket (a lost node must not sign everyone out)."""
    logins = await open_kv(js, subjects.KV_DESK_LOGINS, limits.window, replicas)
    revoked = await open_kv(js, subjects.KV_DESK_REVOKED, REVOCATION_TTL, replicas)
    return LoginLimiter(logins, limits), Revocations(revoked)
