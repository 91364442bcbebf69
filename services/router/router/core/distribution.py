"""Which operator gets a chat: one strategy per mode, registered in one table.

Adding a mode = adding a module with a class implementing :class:`Strategy`
and one line in :data:`STRATEGIES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from openlines.lines import QueueConfig
from router.core.capacity import OperatorView, may_be_offered

__all__ = ["Choice", "Context", "OperatorView", "Strategy", "asks_responsible", "available", "choose", "pick", "pick_many"]


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """Facts about the chat that some strategies use."""

    exclude: frozenset[str] = frozenset()  # operators who must not get this chat now
    preferred: str | None = None  # the client's responsible manager from the CRM, if known


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    """Whom a strategy offers the chat to, and how.

    ``to_all``: the chat is offered to every one of ``operators`` at once and the
    first to accept takes it (capacity is claimed on accepting); otherwise it is
    given to the one operator, whose capacity is claimed at once. The strategy
    says which, so no caller needs to know the modes.
    """

    operators: list[str] = []
    to_all: bool = False


NOBODY = Choice()


class Strategy(Protocol):
    # The strategy decides on the client's responsible manager from the CRM: the shell asks crm-sync for it.
    asks_responsible: bool

    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> Choice:
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
        if not may_be_offered(op.status, op.open_chats, queue):
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


def asks_responsible(queue: QueueConfig) -> bool:
    """Whether the line's mode wants the client's responsible manager (``Context.preferred``) to decide."""
    return STRATEGIES[queue.mode].asks_responsible


def choose(queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context = Context()) -> Choice:
    """Whom the chat is offered to, per the line's mode, and whether to all of them at once."""
    return STRATEGIES[queue.mode].pick(queue, operators, ctx)


def pick_many(queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context = Context()) -> list[str]:
    """Everyone the chat is offered to, per the line's mode."""
    return choose(queue, operators, ctx).operators


def pick(queue: QueueConfig, operators: Sequence[OperatorView], exclude: frozenset[str] = frozenset()) -> str | None:
    """The single operator a one-at-a-time mode chooses (first of :func:`pick_many`)."""
    chosen = pick_many(queue, operators, Context(exclude=exclude))
    return chosen[0] if chosen else None
