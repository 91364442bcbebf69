"""A line's waiting queue: FIFO by the time a chat started waiting.

A chat put back to waiting (its operator did not answer, went away, passed it
on) keeps the place it had, since ``since`` is when it first started waiting.
Kept sorted (``sortedcontainers``), so the head is O(1) and adding, removing
and a chat's position are O(log n) whatever the queue's length.
"""

from __future__ import annotations

from collections.abc import Iterator

from sortedcontainers import SortedKeyList

from openlines.state import QueuedChat


def _order(chat: QueuedChat) -> tuple[float, str]:
    return (chat.since, chat.session_id)


class WaitingLine:
    """The chats waiting on one line, oldest first."""

    __slots__ = ("_chats", "_order")

    def __init__(self, chats: list[QueuedChat] | None = None) -> None:
        self._order: SortedKeyList = SortedKeyList(key=_order)
        self._chats: dict[str, QueuedChat] = {}
        for chat in chats or []:
            self.add(chat)

    def add(self, chat: QueuedChat) -> bool:
        """Put a chat in its place; False when it already waits there."""
        current = self._chats.get(chat.session_id)
        if current is not None:
            if _order(current) == _order(chat):
                return False
            self._order.remove(current)
        self._chats[chat.session_id] = chat
        self._order.add(chat)
        return True

    def remove(self, session_id: str) -> bool:
        """Take a chat out; False when it was not waiting."""
        chat = self._chats.pop(session_id, None)
        if chat is None:
            return False
        self._order.remove(chat)
        return True

    def get(self, session_id: str) -> QueuedChat | None:
        return self._chats.get(session_id)

    def first(self, n: int) -> Iterator[QueuedChat]:
        """The ``n`` chats waiting longest, oldest first (O(n), whatever the queue's length)."""
        return iter(list(self._order.islice(0, n)))

    def head(self) -> QueuedChat | None:
        """The chat waiting longest, or None."""
        return self._order[0] if self._order else None

    def position(self, session_id: str) -> int:
        """1-based place of a chat, 0 when it is not waiting."""
        chat = self._chats.get(session_id)
        if chat is None:
            return 0
        return int(self._order.bisect_key_left(_order(chat))) + 1

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._chats

    def __len__(self) -> int:
        return len(self._chats)

    def __iter__(self) -> Iterator[QueuedChat]:
        return iter(list(self._order))
