"""What to send to VK for one outbound message, and what to do when VK says no."""

from __future__ import annotations

import hashlib
from typing import Literal

INT32_MAX = 2**31 - 1

# Error codes of the VK API (errors.json of the VK API schema, v5.199).
TOO_MANY_REQUESTS = 6
FLOOD_CONTROL = 9
INTERNAL_ERROR = 10
RATE_LIMIT = 29
UNKNOWN_ERROR = 1
RETRYABLE_CODES = frozenset({UNKNOWN_ERROR, TOO_MANY_REQUESTS, FLOOD_CONTROL, INTERNAL_ERROR, RATE_LIMIT})

Verdict = Literal["retry", "permanent"]


def random_id(outbound_id: str, part: int = 0) -> int:
    """VK's idempotency key of one ``messages.send``: stable for (message, part), 1..2^31-1.

    VK drops a send whose ``random_id`` it has already seen from this
    community to this peer, so a redelivered message is never doubled.
    0 would mean "no check", so it is never produced.
    """
    digest = hashlib.blake2b(f"{outbound_id}\x1f{part}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % INT32_MAX + 1


def split_text(text: str, limit: int) -> list[str]:
    """Cut ``text`` into parts of at most ``limit`` characters, preferring paragraph, line and word ends."""
    if limit < 1:
        raise ValueError("limit must be >= 1")
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[:limit]
        cut = -1
        for sep in ("\n\n", "\n", " "):
            at = window.rfind(sep)
            if at > limit // 2:  # never leave a tiny part for the sake of a separator
                cut = at + len(sep)
                break
        if cut <= 0:
            cut = limit
            # keep combining marks and joined emoji with the character they belong to
            while cut > 1 and _is_combining(rest[cut]):
                cut -= 1
        parts.append(rest[:cut].rstrip() or rest[:cut])
        rest = rest[cut:]
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


def _is_combining(ch: str) -> bool:
    code = ord(ch)
    return 0x0300 <= code <= 0x036F or 0xFE00 <= code <= 0xFE0F or code == 0x200D


def verdict(code: int) -> Verdict:
    """Retry: too many requests, flood control, VK internal errors, rate limit. Anything else will not change by retrying."""
    return "retry" if code in RETRYABLE_CODES else "permanent"
