"""Abuse limits at the widget: token buckets per key (a visitor, a client address).

A bucket holds up to ``burst`` tokens and refills at ``per_minute`` tokens a
minute; one action takes one token. An empty bucket refuses and says how many
whole seconds until a token is back (``retry_after``, at least 1).

Memory is bounded: at most ``max_keys`` buckets are kept. A bucket that has
refilled completely is the same as no bucket at all, so those are dropped
first; if every bucket is still in use the oldest are dropped (forgetting a
key lets it start again with a full burst, never refuses an innocent one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rate:
    per_minute: float  # refill; 0 = no limit
    burst: int  # tokens a fresh key starts with

    @property
    def unlimited(self) -> bool:
        return self.per_minute <= 0


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds until the next action would be allowed (refusals only)


ALLOWED = Verdict(True)


class Buckets:
    """Token buckets by key; ``take(key, now)`` with ``now`` in monotonic seconds."""

    __slots__ = ("_buckets", "max_keys", "rate")

    def __init__(self, rate: Rate, max_keys: int = 100_000) -> None:
        if rate.burst < 1 and not rate.unlimited:
            raise ValueError("a limited rate needs a burst of at least 1")
        self.rate = rate
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at), insertion order = first use

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self.rate.burst)
        tokens, at = held
        return min(float(self.rate.burst), tokens + max(0.0, now - at) * self.rate.per_minute / 60.0)

    def take(self, key: str, now: float) -> Verdict:
        if self.rate.unlimited:
            return ALLOWED
        tokens = self._level(key, now)
        if tokens >= 1.0:
            if key not in self._buckets and len(self._buckets) >= self.max_keys:
                self._prune(now)
            self._buckets[key] = (tokens - 1.0, now)
            return ALLOWED
        self._buckets[key] = (tokens, now)
        return Verdict(False, max(1, math.ceil((1.0 - tokens) * 60.0 / self.rate.per_minute)))

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._level(k, now) >= self.rate.burst]
        for k in full:
            del self._buckets[k]
        excess = len(self._buckets) - self.max_keys + 1
        if excess > 0:
            for k in list(self._buckets)[:excess]:
                del self._buckets[k]
