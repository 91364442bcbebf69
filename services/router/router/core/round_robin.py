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
        order = {op_id: i for i, op_id in enumerate(queue.operators)}
        best = min(free, key=lambda op: (op.last_assigned_at, order[op.id]))
        return Choice(operators=[best.id])
