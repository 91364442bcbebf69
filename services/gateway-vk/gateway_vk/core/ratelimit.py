"""A token bucket per community token: VK allows about 20 requests per second each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # most tokens held at once
    tokens: float | None = None  # None: full on first use
    updated: float = 0.0

    def reserve(self, now: float) -> float:
        """Take one token; return how many seconds the caller must wait before using it (0 = now).

        Reservations queue up: the n-th caller in a burst waits n/rate, so
        callers never exceed the rate even when they all arrive at once.
        """
        if self.tokens is None:
            self.tokens, self.updated = self.burst, now
        elapsed = max(0.0, now - self.updated)
        tokens = min(self.burst, self.tokens + elapsed * self.rate) - 1.0
        self.tokens, self.updated = tokens, max(now, self.updated)
        return 0.0 if tokens >= 0 else -tokens / self.rate
