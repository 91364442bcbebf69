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
    open_chats: int  # the chats that count toward capacity (open or unanswered, per the line)
    last_assigned_at: float


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Facts about the chat that some strategies use."""

    exclude: frozenset[str] = frozenset()  # operators who must not get this chat now
    preferred: str | None = None  # the client's responsible manager from the CRM, if known


class Strategy(Protocol):
    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> list[str]:
        """The operators to offer the chat to (one, or several for "all"); empty when nobody can take it now."""
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
    from router.core.crm_responsible import CrmResponsible
    from router.core.offer_all import OfferAll
    from router.core.round_robin import RoundRobin
    from router.core.strict import Strict

    return {"round_robin": RoundRobin(), "strict": Strict(), "all": OfferAll(), "crm_responsible": CrmResponsible()}


STRATEGIES: dict[str, Strategy] = strategies()


def pick_many(queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context = Context()) -> list[str]:
    """Everyone the chat is offered to, per the line's mode."""
    return STRATEGIES[queue.mode].pick(queue, operators, ctx)


def pick(queue: QueueConfig, operators: Sequence[OperatorView], exclude: frozenset[str] = frozenset()) -> str | None:
    """The single operator a one-at-a-time mode chooses (first of :func:`pick_many`)."""
    chosen = pick_many(queue, operators, Context(exclude=exclude))
    return chosen[0] if chosen else None
