"""Round robin (Bitrix24 "evenly"): the free operator assigned longest ago."""

from __future__ import annotations

from collections.abc import Sequence

from openlines.lines import QueueConfig
from router.core.distribution import NOBODY, Choice, Context, OperatorView, available


class RoundRobin:
    asks_responsible = False

    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> Choice:
        free = available(queue, operators, ctx.exclude)
        if not free:
            return NOBODY
        # ``free`` is in queue order and min keeps the first of equals: a tie goes to the first in the queue.
        best = min(free, key=_assigned_at)
        return Choice(operators=[best.id])


def _assigned_at(op: OperatorView) -> float:
    return op.last_assigned_at
