"""How long waiting may take in a test: deadlines stretched by the machine's load.

A loaded machine (CI runners sharing their cores, a developer's builds) makes everything
slower, so every deadline in the tests is stretched by it instead of failing. Set
OPENLINES_TEST_TIME_SCALE to fix the factor.
"""

from __future__ import annotations

import os

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
