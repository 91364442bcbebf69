"""Send pacing: a generic cell rate algorithm (GCRA) and retry backoff.

The caller passes ``now`` (monotonic seconds) in; :meth:`Pace.reserve` books
the next slot and says how long to wait for it. Booking before waiting makes
concurrent senders share a budget fairly without a lock.
"""

from __future__ import annotations


class Pace:
    """At most ``rate`` sends per second on average, ``burst`` back to back."""

    __slots__ = ("_tat", "interval", "tolerance")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._tat = float("-inf")  # theoretical arrival time of the next send

    def reserve(self, now: float) -> float:
        """Book one send; the seconds to wait before making it (0 = now)."""
        tat = max(self._tat, now)
        delay = max(0.0, tat - self.tolerance - now)
        self._tat = tat + self.interval
        return delay

    def hold(self, until: float) -> None:
        """Nothing may be sent before ``until`` (the platform said to slow down)."""
        self._tat = max(self._tat, until + self.tolerance)

    def idle(self, now: float) -> bool:
        """True when the pace has fully recovered: forgetting it changes nothing."""
        return self._tat <= now


def backoff(attempt: int, base: float, cap: float, jitter: float = 0.0) -> float:
    """Delay before retry ``attempt`` (1 = first retry): base * 2^(attempt-1), capped; ``jitter`` in [0, 1)
    shortens it by up to half so replicas spread out."""
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    delay = min(cap, base * (2.0 ** min(attempt - 1, 32)))
    return delay * (1.0 - jitter / 2.0)
