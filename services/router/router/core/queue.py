"""The per-line waiting queue: FIFO by the time a chat started waiting."""

from __future__ import annotations

import bisect

from openlines.state import QueuedChat, WaitingQueue


def enqueue(queue: WaitingQueue, chat: QueuedChat) -> WaitingQueue | None:
    """The queue with ``chat`` in its place, or None if it is already queued."""
    if any(c.session_id == chat.session_id for c in queue.chats):
        return None
    chats = list(queue.chats)
    bisect.insort(chats, chat, key=lambda c: (c.since, c.session_id))
    return WaitingQueue(chats=chats)


def remove(queue: WaitingQueue, session_id: str) -> WaitingQueue | None:
    """The queue without ``session_id``, or None if it was not queued."""
    chats = [c for c in queue.chats if c.session_id != session_id]
    return None if len(chats) == len(queue.chats) else WaitingQueue(chats=chats)


def position(queue: WaitingQueue, session_id: str) -> int:
    """1-based position of a chat, 0 when not queued."""
    for i, c in enumerate(queue.chats, 1):
        if c.session_id == session_id:
            return i
    return 0
