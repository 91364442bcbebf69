"""Who is on which line: the line configs, re-read at most every few seconds (the lines bucket is small)."""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext

from openlines.apply import load_lines
from openlines.lines import LineConfig

LINES_TTL = 2.0  # seconds the list is trusted: a change of a line's queue reaches views and search within it


class LineList:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._at = -LINES_TTL
        self._lines: list[LineConfig] = []
        self._lock = asyncio.Lock()

    async def all(self) -> list[LineConfig]:
        async with self._lock:
            if time.monotonic() - self._at > LINES_TTL:
                self._lines = await load_lines(self.js)
                self._at = time.monotonic()
            return self._lines

    async def of(self, operator_id: str) -> list[LineConfig]:
        """The lines whose queue the operator is in."""
        return [line for line in await self.all() if operator_id in line.queue.operators]
