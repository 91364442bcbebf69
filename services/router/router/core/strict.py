"""Strict order: always the first free operator in the queue's order."""

from __future__ import annotations

from collections.abc import Sequence

from openlines.lines import QueueConfig
from router.core.distribution import Context, OperatorView, available


class Strict:
    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> list[str]:
        free = available(queue, operators, ctx.exclude)
        return [free[0].id] if free else []
