"""Strict order: always the first free operator in the queue's order."""

from __future__ import annotations

from collections.abc import Sequence

from openlines.lines import QueueConfig
from router.core.distribution import NOBODY, Choice, Context, OperatorView, available


class Strict:
    asks_responsible = False

    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> Choice:
        free = available(queue, operators, ctx.exclude)
        return Choice(operators=[free[0].id]) if free else NOBODY
