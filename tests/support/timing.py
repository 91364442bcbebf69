"""How long waiting may take in a test: deadlines stretched by the machine's load, and waiting for a condition.

A loaded machine (CI runners sharing their cores, a developer's builds) makes everything
slower, so every deadline in the tests is stretched by it instead of failing. Set
OPENLINES_TEST_TIME_SCALE to fix the factor.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

MAX_TIME_SCALE = 4.0


def time_scale() -> float:
    """How much longer than on an idle machine waiting may take now: the load per core (1 to 4)."""
    fixed = os.environ.get("OPENLINES_TEST_TIME_SCALE")
    if fixed:
        return max(1.0, float(fixed))
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return min(MAX_TIME_SCALE, max(1.0, load))


def scaled(seconds: float) -> float:
    """A deadline of ``seconds`` on an idle machine, stretched for the load now."""
    return seconds * time_scale()


async def wait_for(
    probe: Callable[[], Awaitable[T | None] | T | None], *, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``.

    ``timeout`` is what it may take on an idle machine: it is stretched by :func:`time_scale`
    (checked as it waits, so load that comes meanwhile counts too).
    """
    start = time.monotonic()
    last: Any = None
    while True:
        result = probe()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        waited = time.monotonic() - start
        if waited > timeout * time_scale():
            raise AssertionError(
                f"timed out after {waited:.0f}s ({timeout}s on an idle machine, x{time_scale():.1f} for its load) "
                f"waiting for {what} (last: {last!r})"
            )
        await asyncio.sleep(interval)
