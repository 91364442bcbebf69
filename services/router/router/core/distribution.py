"""Which operator gets a chat: one strategy per mode, registered in one table.

Adding a mode = adding a module with a class implementing :class:`Strategy`
and one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from openlines.lines import QueueConfig


class OperatorView(msgspec.Struct, frozen=True, kw_only=True):
    """What distribution needs to know of one operator, read at decision time."""

    id: str
    status: str  # online | away | offline
    open_chats: int
    last_assigned_at: float


class Strategy(Protocol):
    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], exclude: frozenset[str]) -> str | None:
        """The operator to offer the chat to, or None when nobody can take it now."""
        ...


def available(queue: QueueConfig, operators: Sequence[OperatorView], exclude: frozenset[str]) -> list[OperatorView]:
    """Operators of the queue who may take one more chat, in queue order."""
    by_id = {op.id: op for op in operators}
    out: list[OperatorView] = []
    for op_id in queue.operators:
        op = by_id.get(op_id)
        if op is None or op.id in exclude:
            continue
        if queue.skip_offline and op.status != "online":
            continue
        if op.open_chats >= queue.max_chats_per_operator:
            continue
        out.append(op)
    return out


def strategies() -> dict[str, Strategy]:
    from router.core.round_robin import RoundRobin

    return {"round_robin": RoundRobin()}


STRATEGIES: dict[str, Strategy] = strategies()


def pick(queue: QueueConfig, operators: Sequence[OperatorView], exclude: frozenset[str] = frozenset()) -> str | None:
    return STRATEGIES[queue.mode].pick(queue, operators, exclude)
