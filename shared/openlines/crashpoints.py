"""Named crash points for fault-injection tests.

``OPENLINES_CRASH_AT=router.offer.recorded`` (a comma-separated list) makes the
process die the first time it passes that point, as ``kill -9`` would: no
cleanup, no acknowledgement, nothing flushed. A test can so kill a service
between two writes that a random kill only rarely hits. Unset in production,
where a crash point costs one set lookup.
"""

from __future__ import annotations

import os

ENV = "OPENLINES_CRASH_AT"
EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL

_armed = frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def crash_point(name: str) -> None:
    """Die here, at once, if ``name`` is armed in ``OPENLINES_CRASH_AT``."""
    if name in _armed:
        os.write(2, f"crash point {name}: exiting as if killed\n".encode())
        os._exit(EXIT_CODE)
