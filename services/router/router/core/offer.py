"""Offer: who gets a waiting chat now, and who next when nobody answers.

The line's strategy (``distribution``) picks among the operators who may take
the chat; this module adds what is the same for every mode: the operators who
let the current offer pass are left out of the next one, unless nobody else is
free, when a new round starts rather than let the chat hang.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from openlines.lines import QueueConfig
from router.core import capacity
from router.core.capacity import OperatorView
from router.core.distribution import Choice, Context, choose


def decide(
    queue: QueueConfig,
    operators: Sequence[OperatorView],
    *,
    declined_by: Iterable[str] = (),
    exclude: frozenset[str] = frozenset(),
    preferred: str | None = None,
) -> Choice:
    """Whom a waiting chat is offered to now; nobody (an empty choice) when nobody can take it."""
    declined = frozenset(declined_by)
    choice = choose(queue, operators, Context(exclude=exclude | declined, preferred=preferred))
    if not choice.operators and declined:
        # Everyone free has let it pass once: start a new round rather than let it hang.
        choice = choose(queue, operators, Context(exclude=exclude, preferred=preferred))
    return choice


def after_offer(operators: Sequence[OperatorView], choice: Choice, now: float) -> list[OperatorView]:
    """The operators as the next decision sees them once ``choice`` was offered at ``now``.

    A chat given to one operator claims their capacity at once; a chat offered
    to all claims it only when one of them accepts.
    """
    if choice.to_all or not choice.operators:
        return list(operators)
    return [capacity.claimed_view(v, now) if v.id == choice.operators[0] else v for v in operators]


def next_on_no_answer(
    queue: QueueConfig, operators: Sequence[OperatorView], offered: Choice, *, preferred: str | None, now: float
) -> Choice:
    """Who the chat passes to when nobody accepts ``offered`` in time.

    ``operators`` as they were when the offer was made; the one it was given to
    gets their capacity back when it passes on, but counts as assigned at ``now``.
    """
    if not offered.to_all and offered.operators:
        op_id = offered.operators[0]
        operators = [msgspec.structs.replace(v, last_assigned_at=now) if v.id == op_id else v for v in operators]
    return decide(queue, operators, declined_by=offered.operators, preferred=preferred)
