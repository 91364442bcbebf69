"""The customer-service window: how long after a client's last message a channel lets a business write freely.

WhatsApp delivers a business's free-form message only within 24 hours of the
client's last message to that number; after that only an approved message
template reaches the client (and answers the window open again when the client
replies). Pure functions of (channel, the client's last message time, now):
the router refuses a free-form reply outside the window, the desk offers the
account's templates instead, and the router sends no auto-reply then.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# channel -> seconds the window stays open after the client's last message
WINDOWS: dict[str, float] = {"whatsapp": 24 * 3600.0}
_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def has_window(channel: str) -> bool:
    return channel in WINDOWS


def closes_at(channel: str, last_client_at: datetime | None) -> datetime | None:
    """When the window of a chat closes (closed already when in the past); None: the channel has no window.

    A chat whose client never wrote (``last_client_at`` None) on a channel with a
    window counts as closed since the beginning of time: only a template may open it.
    """
    length = WINDOWS.get(channel)
    if length is None:
        return None
    if last_client_at is None:
        return _EPOCH
    return last_client_at + timedelta(seconds=length)


def is_open(channel: str, last_client_at: datetime | None, now: datetime) -> bool:
    """Whether a free-form message may be sent to the chat now (always, on a channel without a window)."""
    end = closes_at(channel, last_client_at)
    return end is None or now < end
