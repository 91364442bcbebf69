"""CRM responsible: the client's responsible manager, else the line's fallback mode.

The responsible manager gets the chat only when they are in the queue,
online and have room; otherwise the chat goes the usual way.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from openlines.lines import QueueConfig
from router.core import distribution
from router.core.distribution import Choice, Context, OperatorView, available


class CrmResponsible:
    asks_responsible = True

    def pick(self, queue: QueueConfig, operators: Sequence[OperatorView], ctx: Context) -> Choice:
        if ctx.preferred and any(op.id == ctx.preferred for op in available(queue, operators, ctx.exclude)):
            return Choice(operators=[ctx.preferred])
        fallback = msgspec.structs.replace(queue, mode=queue.fallback_mode)
        return distribution.STRATEGIES[queue.fallback_mode].pick(fallback, operators, ctx)
