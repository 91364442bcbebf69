"""All: offer to every free operator at once; the first to accept takes the chat."""

from __future__ import annotations

from collections.abc import Sequence

from openlines.lines import QueueConfig
from router.core.distribution import Choice, Context, OperatorView, available


class OfferAll:
    asks_responsible = False

    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> Choice:
        return Choice(operators=[op.id for op in available(queue, operators, ctx.exclude)], to_all=True)
