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
from nats.js.kv import KeyValue

from openlines import bus, subjects
from openlines.bus import kv_get, kv_update

# Longer than the longest session a cookie can carry (Settings.session_hours is at most 744).
REVOCATION_TTL = 745 * 3600.0


class Failures(msgspec.Struct, kw_only=True):
    times: list[float] = []  # epoch seconds of recent failed sign-ins


def _key(kind: str, value: str) -> str:
    # Logins and addresses (IPv6 has ':') are hashed into KV-safe keys.
    return f"{kind}.{hashlib.blake2b(value.lower().encode(), digest_size=12).hexdigest()}"


async def open_kv(js: JetStreamContext, bucket: str, ttl: float, replicas: int) -> KeyValue:
    return await bus.own_bucket(js, bucket, ttl=ttl, replicas=replicas)


@dataclass(frozen=True, slots=True)
class Limits:
    window: float
    per_login: int  # failures of one login from everywhere before each attempt on it is slowed (never locked)
    per_address: int  # failures of any logins from one address before that address is locked out
    per_source: int = 5  # failures of one login from one address before that pair is locked out
    slow_seconds: float = 3.0  # how long an attempt on a login past ``per_login`` waits before it is checked


@dataclass(frozen=True, slots=True)
class Verdict:
    retry_after: int  # seconds until this login may be tried from this address; 0 = now
    slow: bool  # the login is under attack from many addresses: answer only after Limits.slow_seconds


class LoginLimiter:
    """Sliding windows of failed sign-ins: per (login, address), per address, per login.

    Locking a login out everywhere would let anyone lock out any account, an
    admin's included, with a few wrong passwords. So a login is locked only
    for the address its failures come from (and an address for every login
    once it fails often); a login that fails from many addresses is merely
    slowed, every attempt on it waiting a few seconds, which keeps the real
    person able to sign in while it makes guessing from a crowd of addresses slow.
    """

    def __init__(self, kv: KeyValue, limits: Limits) -> None:
        self.kv = kv
        self.limits = limits

    def _keys(self, login: str, address: str) -> dict[str, int]:
        keys = {_key("addr", address): self.limits.per_address}
        if login:
            keys[_key("pair", f"{login.lower()}\n{address}")] = self.limits.per_source
            keys[_key("login", login)] = self.limits.per_login
        return keys

    async def _recent(self, key: str, now: float) -> list[float]:
        got, _ = await kv_get(self.kv, key, Failures)
        return sorted(t for t in (got.times if got else []) if t > now - self.limits.window)

    async def check(self, login: str, address: str, now: float) -> Verdict:
        """May this login be tried from this address now (``retry_after`` 0), and must the attempt wait first?"""
        wait = 0.0
        slow = False
        for key, limit in self._keys(login, address).items():
            recent = await self._recent(key, now)
            if len(recent) < limit:
                continue
            if key.startswith("login."):
                slow = True
            else:
                wait = max(wait, recent[-limit] + self.limits.window - now)
        return Verdict(retry_after=math.ceil(wait), slow=slow)

    async def failed(self, login: str, address: str, now: float) -> None:
        for key, limit in self._keys(login, address).items():

            def add(cur: Failures | None, limit: int = limit) -> Failures:
                recent = [t for t in (cur.times if cur else []) if t > now - self.limits.window]
                return Failures(times=[*recent, now][-limit:])

            await kv_update(self.kv, key, Failures, add)

    async def succeeded(self, login: str, address: str) -> None:
        """A right password clears this login's failures from this address (the address and the login keep theirs:
        one success must not reset what a crowd of addresses is doing)."""
        await self.kv.delete(_key("pair", f"{login.lower()}\n{address}"))


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
