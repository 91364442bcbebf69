"""The per-chat flood guard: how many client messages a chat may bring in a window.

A fixed window per session: it starts with the first message counted and
lasts ``window`` seconds; the next message after it starts a new one. Beyond
``limit`` messages in a window the chat is flooding: its messages are still
stored in the transcript (nothing is lost) but held from the operator (no
live push, no unread count), and the first one beyond the limit marks the
chat for a supervisor. A new window lets messages through again.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FloodRule:
    limit: int  # messages per chat per window; 0 = no guard
    window: float  # seconds
    channels: frozenset[str]  # the channels it guards

    def guards(self, channel: str) -> bool:
        return self.limit > 0 and channel in self.channels


@dataclass(frozen=True, slots=True)
class Count:
    window_start: float  # epoch seconds
    count: int  # messages in the window, this one included

    def held(self, rule: FloodRule) -> bool:
        """This message is beyond the limit: stored, not pushed to the operator."""
        return rule.limit > 0 and self.count > rule.limit

    def first_held(self, rule: FloodRule) -> bool:
        """This message is the first beyond the limit in its window: the moment to flag the chat."""
        return rule.limit > 0 and self.count == rule.limit + 1


def count(rule: FloodRule, window_start: float, counted: int, now: float) -> Count:
    """The window and count after one more message at ``now``."""
    if counted <= 0 or now - window_start >= rule.window or now < window_start:
        return Count(window_start=now, count=1)
    return Count(window_start=window_start, count=counted + 1)
