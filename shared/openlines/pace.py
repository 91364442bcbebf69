"""Send pacing shared by the gateways: one limiter whose burst is honoured exactly, and retry backoff.

:class:`Pace` lets at most ``burst`` sends through in any window of
``burst / rate`` seconds: a platform limit of "30 messages a second" is
``Pace(30, 30)`` and never lets a 31st through within a second, however the
sends arrive (a token bucket of the same rate and burst lets up to twice as
many through in the first second: its bucket is full and refills meanwhile).
A per-chat limit of "about one a second, short bursts allowed" is
``Pace(1, 3)``: three back to back, then the next once the first is three
seconds old.

The caller passes ``now`` (monotonic seconds) in; :meth:`Pace.reserve` books
the next free slot and says how long to wait for it. Booking before waiting
lets concurrent senders share the budget in arrival order without a lock.
"""

from __future__ import annotations

from collections import deque


class Pace:
    """At most ``burst`` sends in any ``burst / rate`` seconds (so ``rate`` a second on average)."""

    __slots__ = ("_held", "_slots", "burst", "window")

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.burst = int(burst)
        self.window = self.burst / rate
        self._slots: deque[float] = deque(maxlen=self.burst)  # the last ``burst`` booked send times, in order
        self._held = float("-inf")

    def reserve(self, now: float) -> float:
        """Book one send; the seconds to wait before making it (0 = now)."""
        at = max(now, self._held)
        if self._slots:
            at = max(at, self._slots[-1])  # in booking order
            if len(self._slots) == self.burst:
                at = max(at, self._slots[0] + self.window)  # the send ``burst`` back must be a window old
        self._slots.append(at)
        return at - now

    def hold(self, until: float) -> None:
        """Nothing may be sent before ``until`` (the platform said to slow down)."""
        self._held = max(self._held, until)

    def idle(self, now: float) -> bool:
        """True when forgetting this pace changes nothing: no booked send is within a window of ``now``."""
        last = self._slots[-1] if self._slots else float("-inf")
        return self._held <= now and last + self.window <= now


def backoff(attempt: int, base: float, cap: float, jitter: float = 0.0) -> float:
    """Delay before retry ``attempt`` (1 = first retry): base * 2^(attempt-1), capped.

    ``jitter`` in [0, 1) spreads replicas apart: the delay is scaled by
    (1 - jitter/2) .. 1, chosen by the caller.
    """
    if attempt < 1:
        raise ValueError("attempt starts at 1")
    delay = min(cap, base * (2.0 ** min(attempt - 1, 32)))
    return delay * (1.0 - jitter / 2.0)
